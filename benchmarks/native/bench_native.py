"""Native-size ImageNet-class models through cifarbench: convert, bench --synthetic, parity on photos, classify end to end.

keras.applications MobileNetV2, ResNet50 and EfficientNetB0 at 224x224 with 1,000 classes, built with
``weights=None`` and a fixed seed (nothing downloads), their BatchNorm statistics then taken from 64 photos
(see BUILD: without it a random deep net answers the same distribution for every image):

1. ``convert`` each to every format, calibration and parity on photos made here (CIFAR-10 test images upscaled
   to 256-800 px JPEGs of varied aspect, so the loader really resizes them to 224x224), each with its Keras
   application's preprocessing preset (MobileNetV2: tf, ResNet50: caffe, EfficientNetB0: none - it rescales
   inside). Float parity (top-1 agreement with Keras, target >= 99.9 %) and int8 agreement come from the manifests.
2. ``bench --synthetic --all`` on the three models in one run: img/s at batch 1 and 32, p50/p99, size, peak RSS.
3. ``classify`` end to end on generated 1920x1080 JPEG photos with MobileNetV2: img/s against min(decode rate,
   model rate), both measured in the same run (interleaved rounds, best of each), target >= 0.85x.

    nice -n 10 python benchmarks/native/bench_native.py [--stages convert,bench,classify] [--work /tmp/native]

Writes results.json, the bench run's report (bench/) and the generated part of results.md beside this script.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks" / "classify"))  # bench_classify: the photos and the results.md writer
HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"
ARCHS = {  # name: (keras.applications constructor, preset of its preprocess_input)
    "mobilenetv2": ("MobileNetV2", "tf"),
    "resnet50": ("ResNet50", "caffe"),
    "efficientnetb0": ("EfficientNetB0", "none"),
}
CLI = [sys.executable, "-m", "cifarbench"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


BUILD = """
import sys
import keras, numpy as np
from PIL import Image
arch, module, seed, out, photos = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:]
keras.utils.set_random_seed(seed)
m = getattr(keras.applications, arch)(weights=None, input_shape=(224, 224, 3), classes=1000)
# BatchNorm statistics from 64 photos (momentum 0, one training-mode pass, no gradient step): with the default
# mean 0 / variance 1 a random deep net saturates and answers the same distribution for every image (measured:
# MobileNetV2's max |dp| between any two photos was 0), which would make parity trivially 100 %.
x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224))) for p in photos]).astype("float32")
x = getattr(keras.applications, module).preprocess_input(x)
bns = [l for l in m.layers if isinstance(l, keras.layers.BatchNormalization)]
saved = [l.momentum for l in bns]
for l in bns:
    l.momentum = 0.0
m(x, training=True)
for l, mom in zip(bns, saved):
    l.momentum = mom
p = keras.ops.convert_to_numpy(m(x[:16], training=False))
print(m.count_params(), "distinct top-1 on 16 photos:", len(set(p.argmax(1).tolist())), "max p", float(p.max()))
m.save(out)
"""
MODULES = {"MobileNetV2": "mobilenet_v2", "ResNet50": "resnet50", "EfficientNetB0": "efficientnet"}


def build(arch: str, dest: Path, seed: int, photos: list[Path]) -> Path:
    """The Keras application at 224x224, 1,000 classes, random weights from ``seed``, BN statistics from photos."""
    path = dest / f"{arch}.keras"
    if path.exists():
        return path
    dest.mkdir(parents=True, exist_ok=True)
    name = ARCHS[arch][0]
    subprocess.run([sys.executable, "-c", BUILD, name, MODULES[name], str(seed), str(path), *map(str, photos)],
                   check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return path


def make_photo_tree(dest: Path, n: int, seed: int = 0, skip: int = 0) -> Path:
    """``n`` JPEGs in folders class_0..class_9 (names of the models' first classes): CIFAR-10 test images upscaled.

    ``skip``: start after that many archive images (a disjoint set).
    """
    from PIL import Image

    from cifarbench.paths import BUNDLED_TEST_ARCHIVE

    if dest.exists() and sum(1 for _ in dest.rglob("*.jpg")) >= n:
        return dest
    rng = np.random.default_rng(seed)
    done, seen = 0, 0
    with tarfile.open(BUNDLED_TEST_ARCHIVE) as tf:
        for m in tf:
            if done >= n:
                break
            if not m.isfile() or not m.name.endswith(".jpg"):
                continue
            seen += 1
            if seen <= skip:
                continue
            label = done % 10
            im = Image.open(io.BytesIO(tf.extractfile(m).read())).convert("RGB")  # type: ignore[union-attr]
            w = int(rng.integers(256, 801))
            h = int(w * rng.uniform(0.6, 1.4))
            d = dest / f"class_{label}"
            d.mkdir(parents=True, exist_ok=True)
            im.resize((w, h), Image.Resampling.BICUBIC).save(d / f"{done:05d}.jpg", quality=90)
            done += 1
    return dest


def run(cmd: list[str], log_path: Path) -> tuple[int, float]:
    log("$ " + shlex.join(["cifarbench"] + cmd[3:] if cmd[:3] == CLI else cmd))
    t0 = time.perf_counter()
    with open(log_path, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def stage_convert(args: argparse.Namespace, res: dict) -> None:
    tree = make_photo_tree(args.work / "photo_tree", args.calibration_size + args.parity_size + 50)
    res["bn_photos"] = "64 other CIFAR-10 test images, upscaled the same way (not in the calibration/parity tree)"
    res["photo_tree"] = {"images": sum(1 for _ in tree.rglob("*.jpg")), "how": "CIFAR-10 test JPEGs upscaled "
                         "(bicubic) to 256-800 px wide, aspect 0.6-1.4, JPEG q90, folders class_0..class_9"}
    for arch in args.archs:
        n_tree = args.calibration_size + args.parity_size + 50
        bn_photos = sorted(make_photo_tree(args.work / "bn_photos", 64, seed=1, skip=n_tree).rglob("*.jpg"))
        src = build(arch, args.work / "src", args.seed, bn_photos)
        out = args.work / "models" / arch
        shutil.rmtree(out, ignore_errors=True)
        cmd = CLI + ["convert", str(src), "--preprocess", ARCHS[arch][1], "--calibration-data", str(tree),
                     "--calibration-size", str(args.calibration_size), "--parity-size", str(args.parity_size),
                     "--out", str(out)]
        rc, wall = run(cmd, args.work / f"convert_{arch}.log")
        entry: dict = {"command": shlex.join(["cifarbench"] + cmd[3:]).replace(str(args.work), "$WORK"),
                       "exit": rc, "wall_s": round(wall, 1)}
        if (out / "manifest.json").exists():
            man = json.loads((out / "manifest.json").read_text())
            entry["input"] = man["input"]
            entry["params"] = man.get("params")
            entry["artifacts"] = {f: {"size_mb": round(a["size"] / 1e6, 2), **{k: a.get("parity", {}).get(k) for k in (
                "status", "top1_agreement", "max_abs_dprob", "accuracy_drop_pp", "images", "warning")}}
                for f, a in man["artifacts"].items()}
            entry["warnings"] = man.get("metrics", {}).get("input_check", {}).get("warnings")
        if rc != 0:
            entry["log_tail"] = (args.work / f"convert_{arch}.log").read_text(errors="replace")[-800:]
        res.setdefault("convert", {})[arch] = entry
        log(f"{arch}: convert exit {rc} in {wall:.0f} s")
        save(args, res)


def stage_bench(args: argparse.Namespace, res: dict) -> None:
    models = [str(args.work / "models" / a) for a in args.archs if (args.work / "models" / a / "manifest.json").exists()]
    out = args.work / "bench"
    shutil.rmtree(out, ignore_errors=True)
    cmd = CLI + ["bench", *[x for m in models for x in ("--model", m)], "--all", "--synthetic", "--batch-sizes", "1,32",
                 "--min-iters", str(args.min_iters), "--min-time", str(args.min_time), "--output-dir", str(out), "-q"]
    rc, wall = run(cmd, args.work / "bench.log")
    res["bench"] = {"command": shlex.join(["cifarbench"] + cmd[3:]).replace(str(args.work), "$WORK"), "exit": rc,
                    "wall_s": round(wall, 1)}
    if (out / "results.json").exists():
        doc = json.loads((out / "results.json").read_text())
        res["bench"]["rows"] = [{
            "model": r["model"], "backend": r["backend"], "status": r["status"], "reason": r["reason"],
            "img_s_b1": next((t["images_per_s"] for t in r["throughput"] if t["batch_size"] == 1), None),
            "img_s_b32": next((t["images_per_s"] for t in r["throughput"] if t["batch_size"] == 32), None),
            "p50_ms": r["latency"].get("p50_ms"), "p99_ms": r["latency"].get("p99_ms"),
            "size_mb": r["size_bytes"] / 1e6 if r["size_bytes"] else None, "peak_rss_mb": r["peak_rss_mb"],
            "load_s": r["load_s"], "runtime": {k: r["runtime"].get(k) for k in ("precision", "mode") if r["runtime"].get(k)}}
            for r in doc["results"]]
        res["bench"]["loadavg"] = [doc["environment"].get("loadavg_start"), doc["environment"].get("loadavg_end")]
        res["bench"]["warnings"] = doc["warnings"]
        dest = HERE / "bench"
        dest.mkdir(exist_ok=True)
        for name in ("results.json", "report.md", "results.csv"):
            text = (out / name).read_text().replace(str(args.work), "$WORK")
            (dest / name).write_text(text)
    save(args, res)


def stage_classify(args: argparse.Namespace, res: dict) -> None:
    from bench_classify import make_photos  # the same generated 1920x1080 photos as the classify benchmark

    from cifarbench import backends as be
    from cifarbench.data.decode_pool import decode_ordered, pick_pool
    from cifarbench.data.discover import discover
    from cifarbench.models.model_ref import resolve_model
    from cifarbench.runs.classify import classify

    model = args.work / "models" / "mobilenetv2"
    manifest = resolve_model(model)
    t = manifest.input.transform
    photos = args.work / "photos1080"
    if sum(1 for _ in photos.glob("*.jpg")) < args.photos:
        make_photos(photos, args.photos)
    entries = list(discover([photos]))[: args.photos]
    workers, batch = len(os.sched_getaffinity(0)), args.batch_size
    names = [be.select(manifest, "auto", "cpu", batch_size=batch).name] + [b for b in args.classify_backends
                                                                        if b in be.BACKENDS]
    names = list(dict.fromkeys(n for n in names if be.unavailable_reason(n, manifest) is None))
    x = np.stack([a for a, _ in decode_ordered(entries, t, None, workers) if a is not None])
    loaded = {b: be.load_backend(b, manifest) for b in names}
    best = {b: {"decode": 0.0, "model": 0.0, "e2e": 0.0} for b in names}
    rounds = []
    for r in range(args.rounds):
        for b in names:
            t0 = time.perf_counter()
            n = sum(1 for a, _ in decode_ordered(entries, t, None, workers, ahead=batch) if a is not None)
            d = n / (time.perf_counter() - t0)
            loaded[b].predict(x[:batch])
            t0 = time.perf_counter()
            for i in range(0, len(x), batch):
                loaded[b].predict(x[i:i + batch])
            m = len(x) / (time.perf_counter() - t0)
            rep = classify([photos], model=str(model), backend=b, workers=workers, batch_size=batch, stream=io.StringIO())
            assert rep.failed == 0 and rep.files == len(entries), rep.summary()
            e = rep.images_per_second
            rounds.append({"round": r + 1, "backend": b, "decode": round(d, 1), "model": round(m, 1), "e2e": round(e, 1),
                           "ratio": round(e / min(d, m), 3), "loadavg": os.getloadavg()[0]})
            log(f"classify round {r + 1} {b}: decode {d:.1f}, model {m:.1f}, end-to-end {e:.1f} img/s "
                f"(ratio {e / min(d, m):.3f})")
            for k, v in (("decode", d), ("model", m), ("e2e", e)):
                best[b][k] = max(best[b][k], v)
    res["classify"] = {"images": len(entries), "image_size": "1920x1080 JPEG q90 (benchmarks/classify make_photos)",
                       "model": "mobilenetv2 at 224x224", "transform": t.describe(), "workers": workers,
                       "pool": pick_pool("auto", workers, len(entries)), "batch": batch, "rounds": rounds,
                       "best": [{"backend": b, **{k: round(v, 1) for k, v in best[b].items()},
                                 "ratio": round(best[b]["e2e"] / min(best[b]["decode"], best[b]["model"]), 3),
                                 "shared_bound": round(1 / (1 / best[b]["decode"] + 1 / best[b]["model"]), 1)}
                                for b in names]}
    save(args, res)


def save(args: argparse.Namespace, res: dict) -> None:
    res["loadavg_end"] = os.getloadavg()
    (HERE / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    write_md(HERE / "results.md", render(res))


def _f(v: object, spec: str = ".1f") -> str:
    return "–" if v is None else format(v, spec)


def render(res: dict) -> str:
    env = res.get("environment", {})
    pk = env.get("packages", {})
    lines = [BEGIN, "", "Generated by " + "; then ".join(f"`{i['command']}` ({i['date']})" for i in res.get("invocations", [])) + ".", "",
             f"Machine: {env.get('cpu')}, {env.get('cores')} usable cores; flags {', '.join(env.get('flags', []))}; "
             f"Python {env.get('python')}; " + ", ".join(f"{k} {pk[k]}" for k in (
                 "tensorflow", "onnxruntime", "ai-edge-litert", "openvino", "pillow") if pk.get(k)) + ".",
             f"The machine was shared with other agents' jobs throughout: load average (1 min) "
             f"{_f((env.get('loadavg_start') or [None])[0], '.1f')} at the start, "
             f"{_f((res.get('loadavg_end') or [None])[0], '.1f')} at the end, on 2 cores.", ""]
    conv = res.get("convert") or {}
    if conv:
        tree = res.get("photo_tree", {})
        lines += ["### Convert: every format, parity on photos resized by the loader", "",
                  f"Photos: {tree.get('images')} ({tree.get('how')}). Agreement = top-1 agreement with the Keras model "
                  "on the parity photos; max |Δp| = largest probability difference.", "",
                  "| model | preset | params | convert wall s | exit | format | size MB | status | top-1 agreement | "
                  "max \\|Δp\\| | images |", "|---|---|---:|---:|---:|---|---:|---|---:|---:|---:|"]
        for arch, e in conv.items():
            first = True
            for fmt, a in (e.get("artifacts") or {"–": {}}).items():
                head = [arch, ARCHS.get(arch, ("", "?"))[1], _f(e.get("params"), ",d") if first else "",
                        _f(e.get("wall_s"), ".0f") if first else "", str(e.get("exit")) if first else ""]
                ag = a.get("top1_agreement")
                lines.append("| " + " | ".join(head + [fmt, _f(a.get("size_mb"), ".1f"), str(a.get("status") or "–"),
                                                       _f(100 * ag, ".2f") + " %" if ag is not None else "–",
                                                       _f(a.get("max_abs_dprob"), ".1e"), _f(a.get("images"), "d")]) + " |")
                first = False
            for w in e.get("warnings") or []:
                lines.append(f"| {arch} | warning: {w} |||||||||| ")
        lines.append("")
    b = res.get("bench") or {}
    if b.get("rows"):
        lines += ["### bench --synthetic: every backend, one run", "", f"`{b['command']}` (exit {b['exit']}, "
                  f"{b['wall_s']:.0f} s; each row in its own process; full report in `bench/report.md`).", "",
                  "| model | backend | img/s batch 1 | img/s batch 32 | p50 ms | p99 ms | size MB | peak RSS MB | load s | ran as |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in b["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {r['model']} | {r['backend']} | {r['status']}: {r['reason']} ||||||||")
                continue
            lines.append(f"| {r['model']} | {r['backend']} | {_f(r['img_s_b1'])} | {_f(r['img_s_b32'])} | "
                         f"{_f(r['p50_ms'], '.2f')} | {_f(r['p99_ms'], '.2f')} | {_f(r['size_mb'], '.1f')} | "
                         f"{_f(r['peak_rss_mb'], '.0f')} | {_f(r['load_s'], '.2f')} | "
                         f"{'; '.join(f'{k} {v}' for k, v in r['runtime'].items()) or ''} |")
        lines += [""] + [f"- bench warning: {w}" for w in b.get("warnings") or []] + [""]
    c = res.get("classify") or {}
    if c.get("best"):
        lines += ["### classify end to end: 1920x1080 JPEGs, MobileNetV2 at 224x224", "",
                  f"{c['images']} photos ({c['image_size']}), transform {c['transform']}, {c['pool']} pool x "
                  f"{c['workers']} workers, batch {c['batch']}. Rates in images/s, best of {len(c['rounds']) // len(c['best'])} "
                  "interleaved rounds; decode = the classify decode pool alone, model = predict on pre-decoded batches, "
                  "end-to-end = `classify()` over the folder. Target: end-to-end >= 0.85 x min(decode, model).", "",
                  "| backend | decode | model | end-to-end | ratio | shared-CPU bound 1/(1/d+1/m) | e2e / bound |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in c["best"]:
            lines.append(f"| {r['backend']} | {r['decode']:.1f} | {r['model']:.1f} | {r['e2e']:.1f} | {r['ratio']:.3f} | "
                         f"{r['shared_bound']:.1f} | {r['e2e'] / r['shared_bound']:.3f} |")
        lines += ["", "Each round (ratio within the round):", "", "| round | backend | decode | model | end-to-end | ratio | load 1 min |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['round']} | {r['backend']} | {r['decode']} | {r['model']} | {r['e2e']} | {r['ratio']} | "
                  f"{r['loadavg']:.1f} |" for r in c["rounds"]]
    return "\n".join(lines + ["", END])


def write_md(path: Path, generated: str) -> None:
    from bench_classify import write_md as write_block  # one generated-block writer for both benchmarks

    write_block(path, generated, "# Native-size models")


def environment() -> dict:
    from cifarbench.sysinfo import cpu_info, package_versions

    cpu = cpu_info()
    return {"cpu": cpu.get("model"), "flags": sorted(k for k, v in cpu["flags"].items() if v),
            "cores": len(os.sched_getaffinity(0)), "python": sys.version.split()[0],
            "packages": {k: v for k, v in package_versions().items() if v}, "loadavg_start": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--stages", default="convert,bench,classify")
    ap.add_argument("--work", type=Path, default=Path("/tmp/cifarbench-native"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration-size", type=int, default=200)
    ap.add_argument("--parity-size", type=int, default=1000)
    ap.add_argument("--min-iters", type=int, default=100)
    ap.add_argument("--min-time", type=float, default=2.0)
    ap.add_argument("--photos", type=int, default=240)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--classify-backends", default="onnx", help="besides auto's choice")
    ap.add_argument("--render-only", action="store_true", help="rewrite results.md from results.json")
    args = ap.parse_args()
    args.archs = [a for a in args.archs.split(",") if a]
    args.classify_backends = [b for b in args.classify_backends.split(",") if b]
    args.work.mkdir(parents=True, exist_ok=True)
    old = HERE / "results.json"
    res = json.loads(old.read_text()) if old.exists() else {}
    if args.render_only:
        write_md(HERE / "results.md", render(res))
        return
    res.update({"command": "python benchmarks/native/bench_native.py " + " ".join(sys.argv[1:]),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "environment": environment()})
    res.setdefault("invocations", []).append({k: res[k] for k in ("command", "date")} | {
        "loadavg_start": res["environment"]["loadavg_start"]})
    stages = args.stages.split(",")
    for name, fn in (("convert", stage_convert), ("bench", stage_bench), ("classify", stage_classify)):
        if name in stages:
            log(f"stage {name}, load {os.getloadavg()}")
            fn(args, res)
    save(args, res)
    log("done")


if __name__ == "__main__":
    main()
