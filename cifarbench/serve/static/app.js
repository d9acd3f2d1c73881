// cifarbench upload page: no framework, no external requests; everything comes from this server.
"use strict";

(function () {
  const dropZone = document.getElementById("drop-zone");
  const input = document.getElementById("file-input");
  const results = document.getElementById("results");
  const statusEl = document.getElementById("status");
  const modelInfo = document.getElementById("model-info");
  const serving = { top_k: 5, max_images: 32, max_upload_bytes: 10 * 1024 * 1024 };

  function setStatus(text, isError) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", Boolean(isError));
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function loadModel() {
    try {
      const r = await fetch("/v1/model");
      const m = await r.json();
      Object.assign(serving, m.serving || {});
      const acc = m.metrics && m.metrics.test && m.metrics.test.accuracy;
      const parts = [`model ${m.name} (${m.arch})`, `backend ${m.backend.name}`];
      if (typeof acc === "number") parts.push(`test accuracy ${(acc * 100).toFixed(1)} %`);
      parts.push(`classes: ${m.classes.join(", ")}`);
      modelInfo.textContent = parts.join(" · ");
    } catch (e) {
      modelInfo.textContent = "could not load the model description";
    }
  }

  function makeCard(file) {
    const card = el("article", "card pending");
    const head = el("div", "head");
    const img = el("img");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    img.addEventListener("error", () => img.replaceWith(el("div", "noimg")));
    const text = el("div");
    text.append(el("div", "prediction", "classifying…"), el("div", "name", file.name));
    head.append(img, text);
    card.append(head, el("ol", "bars"));
    return card;
  }

  function fillCard(card, res) {
    card.classList.remove("pending");
    const pred = card.querySelector(".prediction");
    const bars = card.querySelector(".bars");
    bars.textContent = "";
    if (!res || !res.ok) {
      card.classList.add("failed");
      pred.textContent = (res && res.error) || "failed";
      return;
    }
    card.dataset.label = res.label;
    pred.textContent = res.label;
    pred.title = `${(res.probability * 100).toFixed(1)} %`;
    for (const t of res.top) {
      const li = el("li");
      const track = el("div", "track");
      const fill = el("div", "fill");
      fill.style.width = `${Math.max(0, Math.min(100, t.probability * 100)).toFixed(1)}%`;
      track.append(fill);
      li.append(el("span", "label", t.label), track, el("span", "pct", `${(t.probability * 100).toFixed(1)}%`));
      bars.append(li);
    }
  }

  // Split files into requests that respect the server's image-count and body-size limits.
  function chunks(files) {
    const out = [];
    let cur = [], bytes = 0;
    const budget = serving.max_upload_bytes - 64 * 1024; // multipart headers
    for (const f of files) {
      if (cur.length && (cur.length >= serving.max_images || bytes + f.size > budget)) {
        out.push(cur); cur = []; bytes = 0;
      }
      cur.push(f); bytes += f.size;
    }
    if (cur.length) out.push(cur);
    return out;
  }

  async function classify(files) {
    if (!files.length) return;
    let done = 0, failed = 0;
    setStatus(`classifying ${files.length} image(s)…`);
    for (const group of chunks(files)) {
      const cards = group.map(makeCard);
      results.prepend(...cards); // newest upload first, files in the order they were picked
      const tooBig = group.map((f) => f.size > serving.max_upload_bytes);
      const form = new FormData();
      group.forEach((f, i) => { if (!tooBig[i]) form.append("file", f, f.name); });
      const sendIdx = group.map((_, i) => i).filter((i) => !tooBig[i]);
      tooBig.forEach((big, i) => {
        if (big) { fillCard(cards[i], { ok: false, error: "file larger than the server's upload limit" }); failed++; }
      });
      if (!sendIdx.length) continue;
      const { body, status } = await post(`/v1/classify?top_k=${encodeURIComponent(serving.top_k)}`, form);
      sendIdx.forEach((ci, k) => {
        const res = body && body.results ? body.results[k] : { ok: false, error: body ? body.error : `HTTP ${status}` };
        fillCard(cards[ci], res);
        if (res && res.ok) done++; else failed++;
      });
    }
    setStatus(`${done} classified${failed ? `, ${failed} failed` : ""}`, failed > 0 && done === 0);
  }

  // POST with up to two retries when the server is busy (503 + Retry-After); a body that is not
  // JSON (a proxy's error page) becomes a one-line error instead of a parse failure.
  async function post(url, form) {
    for (let attempt = 0; ; attempt++) {
      let r;
      try {
        r = await fetch(url, { method: "POST", body: form });
      } catch (e) {
        return { body: { error: `request failed: ${e}` }, status: 0 };
      }
      const wait = Number(r.headers.get("Retry-After"));
      if (r.status === 503 && attempt < 2 && wait > 0 && wait <= 10) {
        setStatus(`server busy, retrying in ${wait} s…`);
        await new Promise((ok) => setTimeout(ok, wait * 1000));
        continue;
      }
      const type = r.headers.get("Content-Type") || "";
      let body = null;
      if (type.includes("json")) {
        try { body = await r.json(); } catch (e) { body = null; }
      }
      return { body: body || { error: `HTTP ${r.status} ${r.statusText}`.trim() }, status: r.status };
    }
  }

  input.addEventListener("change", () => {
    classify(Array.from(input.files));
    input.value = "";
  });
  dropZone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  for (const ev of ["dragenter", "dragover"]) {
    dropZone.addEventListener(ev, (e) => { e.preventDefault(); dropZone.classList.add("dragover"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    dropZone.addEventListener(ev, (e) => { e.preventDefault(); dropZone.classList.remove("dragover"); });
  }
  dropZone.addEventListener("drop", (e) => classify(Array.from(e.dataTransfer.files)));
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => e.preventDefault());

  loadModel();
})();
