"""The upload page in a real browser: `cifarbench serve` in a subprocess, Debian's Chromium via Playwright.

Skipped with a reason when Playwright or the system Chromium is missing (CI installs both).
Nothing is downloaded: Playwright drives /usr/bin/chromium, never its own browser builds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, class_pattern, fake_server_script

CHROMIUM = os.environ.get("CIFARBENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _requirements() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    if not CHROMIUM:
        return "Chromium is not installed (apt-get install chromium)"
    for mods in (("starlette",), ("uvicorn",), ("python_multipart", "multipart")):
        if not any(importlib.util.find_spec(m) for m in mods):
            return f"{mods[0]} is not installed (pip install 'cifarbench[serve]')"
    return None


_MISSING = _requirements()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tiny_model: Path, tmp_path: Path) -> Iterator[str]:
    """The real CLI on loopback; yields its base URL once /health answers."""
    port = _free_port()
    log = open(tmp_path / "server.log", "wb")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifarbench", "serve", "--model", str(tiny_model), "--backend", "onnx-int8",
         "--host", "127.0.0.1", "--port", str(port), "--threads", "1", "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}: {(tmp_path / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("server did not answer /health within 60 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _classify_via_api(url: str, data: bytes) -> dict:
    req = urllib.request.Request(f"{url}/v1/classify", data=data, headers={"Content-Type": "image/png"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["results"][0]


def test_upload_page_shows_predicted_label(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    img_path = tmp_path / "ship.png"
    Image.fromarray(class_pattern(8, np.random.default_rng(3))).resize((96, 96), Image.NEAREST).save(img_path)
    expected = _classify_via_api(server, img_path.read_bytes())
    assert expected["ok"]

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            external: list[str] = []
            page.on("request", lambda req: None if req.url.startswith(server) or req.url.startswith(("blob:", "data:"))
                    else external.append(req.url))
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server + "/")
            expect(page.locator("#model-info")).to_contain_text("onnx-int8")
            page.set_input_files("#file-input", str(img_path))
            card = page.locator(".card").first
            expect(card).to_have_attribute("data-label", expected["label"], timeout=20_000)
            expect(card.locator(".prediction")).to_have_text(expected["label"])
            expect(card.locator(".bars li")).to_have_count(5)
            expect(card.locator(".name")).to_have_text("ship.png")
            expect(page.locator("#status")).to_contain_text("1 classified")

            bad = tmp_path / "notes.txt"
            bad.write_bytes(b"definitely not an image")
            page.set_input_files("#file-input", str(bad))
            failed = page.locator(".card.failed").first
            expect(failed.locator(".prediction")).to_contain_text("not an image", timeout=20_000)
        finally:
            browser.close()
    assert external == [], f"page fetched from elsewhere: {external}"
    assert errors == [], f"JavaScript errors: {errors}"


FAKE_SERVER = fake_server_script(label=8)


@pytest.fixture()
def fake_server(tmp_path: Path) -> Iterator[str]:
    """The real server app with a fixed-answer backend (the page is what is tested here, not a model)."""
    script = tmp_path / "server.py"
    script.write_text(FAKE_SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(10)


def test_page_retries_busy_503_and_shows_non_json_errors_in_one_line(fake_server: str, tmp_path: Path) -> None:
    """A proxy's text/plain 503 with Retry-After is retried twice, then shown as one line; a retry can succeed."""
    from playwright.sync_api import expect, sync_playwright

    img = tmp_path / "a.png"
    Image.fromarray(class_pattern(8, np.random.default_rng(3))).save(img)
    plan: list[str] = []  # what the stub does with each classify request: "busy", "text" or "pass"
    seen: list[str] = []

    def stub(route) -> None:  # type: ignore[no-untyped-def]
        action = plan.pop(0) if plan else "pass"
        seen.append(action)
        if action == "pass":
            route.continue_()
        else:
            route.fulfill(status=503 if action == "busy" else 400, content_type="text/plain",
                          headers={"Retry-After": "1"} if action == "busy" else {}, body="<html>proxy error</html>")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.route("**/v1/classify*", stub)
            page.goto(fake_server + "/")
            expect(page.locator("#model-info")).to_contain_text("fake")

            plan[:] = ["busy", "busy", "busy"]  # still busy after two retries: shown, not retried forever
            page.set_input_files("#file-input", str(img))
            failed = page.locator(".card.failed").first
            expect(failed.locator(".prediction")).to_have_text("HTTP 503 Service Unavailable", timeout=20_000)
            assert seen == ["busy"] * 3

            seen.clear()
            plan[:] = ["text"]  # a non-JSON error without Retry-After: one request, one line
            page.set_input_files("#file-input", str(img))
            expect(page.locator(".card.failed").first.locator(".prediction")).to_have_text("HTTP 400 Bad Request",
                                                                                           timeout=20_000)
            assert seen == ["text"]

            seen.clear()
            plan[:] = ["busy"]  # busy once, then the real server answers
            page.set_input_files("#file-input", str(img))
            expect(page.locator(".card").first).to_have_attribute("data-label", "ship", timeout=20_000)
            assert seen == ["busy", "pass"]
        finally:
            browser.close()
    assert errors == [], f"JavaScript errors: {errors}"
