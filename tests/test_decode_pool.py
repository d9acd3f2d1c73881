"""The decode pool: ordered, bounded look-ahead, every pool kind alike, dying workers, no processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cifarbench.data import decode_pool as dp
from cifarbench.data.discover import FileEntry, discover
from test_discover import _img


def test_decode_pool_is_bounded_and_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake(items: list[tuple[str, str | None]], size: int, resize: str, *rest: object) -> list[tuple[None, str]]:
        calls.append(len(items))
        return [(None, p) for p, _ in items]

    monkeypatch.setattr(dp, "_decode_chunk", fake)
    submitted: list[int] = []
    real_submit = dp._Pool.submit

    def counting_submit(self: dp._Pool, items: list) -> object:
        submitted.append(len(items))
        return real_submit(self, items)

    monkeypatch.setattr(dp._Pool, "submit", counting_submit)
    entries = [FileEntry(f"f{i}") for i in range(100 * dp.CHUNK)]
    it = dp.decode_ordered(entries, 32, "center-crop", workers=2, pool="thread", ahead=4 * dp.CHUNK)
    assert next(it) == (None, "f0")
    # Chunks are submitted by the consumer, so the count is exact now, however slow the workers are (no sleep):
    # a batch and two chunks per worker ahead, plus the one being read, never the whole folder.
    assert len(submitted) == 2 * 2 + 4 + 1
    assert [e for _, e in it] == [f"f{i}" for i in range(1, len(entries))]
    assert len(calls) == len(submitted) == 100  # every chunk decoded exactly once


def test_every_pool_decodes_the_same(tmp_path: Path) -> None:
    for i in range(dp.CHUNK * 2 + 5):
        _img(tmp_path / f"{i:03d}.png", i % 10, seed=i)
    (tmp_path / "000.png").write_bytes(b"")
    entries = list(discover([tmp_path])) + [FileEntry("gone.png", error="file not found")]
    ref = list(dp.decode_ordered(entries, 32, "center-crop", workers=0))
    assert ref[0] == (None, "empty file (0 bytes)") and ref[-1] == (None, "file not found")
    for pool in ("thread", "process"):
        got = list(dp.decode_ordered(entries, 32, "center-crop", workers=2, pool=pool))
        assert [e for _, e in got] == [e for _, e in ref]
        assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(got[1:-1], ref[1:-1]))


def test_a_dying_decoder_process_costs_only_its_file(tmp_path: Path) -> None:
    import decode_crash

    for i in range(dp.CHUNK + 8):
        _img(tmp_path / f"{i:03d}.png", i % 10, seed=i)
    _img(tmp_path / "010-CRASH.png", 1)
    entries = list(discover([tmp_path]))
    got = list(dp.decode_ordered(entries, 32, "center-crop", workers=2, pool="process",
                                   decode_fn=decode_crash.crash_on_marker))
    errors = {os.path.basename(e.path): err for e, (_, err) in zip(entries, got)}
    assert errors.pop("010-CRASH.png") == dp.CRASHED
    assert set(errors.values()) == {None} and len(got) == len(entries)


def test_without_worker_processes_decoding_goes_on_in_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import decode_crash

    monkeypatch.setattr(dp, "_worker_init", decode_crash.failing_init)
    for i in range(dp.CHUNK + 3):
        _img(tmp_path / f"{i:03d}.png", i % 10, seed=i)
    got = list(dp.decode_ordered(list(discover([tmp_path])), 32, "center-crop", workers=2, pool="process"))
    assert len(got) == dp.CHUNK + 3 and all(a is not None and a.shape == (32, 32, 3) for a, _ in got)


def test_workers_die_with_a_killed_parent() -> None:
    code = textwrap.dedent("""
        import json, time
        from cifarbench.data import decode_pool as dp
        if __name__ == "__main__":
            p = dp._Pool("process", 2, dp._decode_chunk, 32, "center-crop")
            p.submit([]).result()
            print(json.dumps(list(p.ex._processes)), flush=True)
            time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        workers = json.loads(child.stdout.readline())
        assert workers and all(_alive(pid) for pid in workers)
    finally:
        child.kill()  # SIGKILL: no cleanup code runs in the parent
        child.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_worker_processes_share_one_decode_budget(tmp_path: Path) -> None:
    import decode_crash

    entries = [FileEntry(f"f{i}") for i in range(2 * dp.CHUNK + 1)]  # three chunks: three workers busy
    got = list(dp.decode_ordered(entries, 32, "center-crop", workers=3, pool="process", decode_fn=decode_crash.budget_probe,
                                 limits=dp.DecodeLimits(budget_bytes=10 << 20)))
    spans = sorted((float(t0), float(t1)) for total, t0, t1 in (e.split() for _, e in got if e))
    assert {e.split()[0] for _, e in got if e} == {str(10 << 20)}  # the pool's budget reached every worker
    # 6 + 6 MiB > 10: no two files' holds overlap, though three processes were free to run them at once
    assert len(spans) == len(entries) and all(a[1] <= b[0] + 1e-3 for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("pool", ["inline", "thread", "process"])
def test_max_pixels_reaches_every_pool_kind(tmp_path: Path, pool: str) -> None:
    from test_images import png_header_bomb

    for i in range(dp.CHUNK + 2):
        _img(tmp_path / f"{i:03d}.png", i % 10, seed=i)
    (tmp_path / "010-bomb.png").write_bytes(png_header_bomb(3000, 3000))
    entries = list(discover([tmp_path]))
    got = list(dp.decode_ordered(entries, 32, "center-crop", workers=0 if pool == "inline" else 2, pool=pool,
                                 limits=dp.DecodeLimits(max_pixels=1_000_000)))
    errors = {os.path.basename(e.path): err for e, (_, err) in zip(entries, got) if err}
    assert list(errors) == ["010-bomb.png"] and "9,000,000 pixels" in errors["010-bomb.png"]


def test_c_library_noise_never_reaches_the_terminal_from_workers(tmp_path: Path) -> None:
    from PIL import features

    from test_images import corrupt_tiff

    if not features.check("libtiff"):
        pytest.skip("Pillow without libtiff")
    for i in range(dp.CHUNK + 2):
        (tmp_path / f"{i:03d}.tif").write_bytes(corrupt_tiff())
    code = textwrap.dedent(f"""
        import json
        from cifarbench.data import decode_pool as dp
        from cifarbench.data.discover import discover
        if __name__ == "__main__":
            for pool in ("process", "thread"):
                got = list(dp.decode_ordered(list(discover([{str(tmp_path)!r}])), 32, "center-crop", 2, pool))
                print(json.dumps(sorted({{e for _, e in got}})))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == "", p.stderr[-2000:]
    for line in p.stdout.splitlines():
        (error,) = json.loads(line)
        assert "libtiff: ZIPDecode" in error



def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of each child of ``pid``."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                if ppid == pid:
                    with open(f"/proc/{d}/cmdline", "rb") as fh:
                        out.append((int(d), fh.read().decode(errors="replace")))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _children_cmdlines(pid: int) -> list[str]:
    return [cmd for _, cmd in _children(pid)]


@pytest.mark.slow  # 3,000 PNGs and a classify process: ~12 s
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_kill_9_leaves_no_resource_tracker_warning(tmp_path) -> None:
    """A cron run killed with SIGKILL: the tracker cleans up the pool's semaphores without a word on stderr."""
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3000):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3)).astype("uint8")).save(src / f"{i:05d}.png")
    proc = subprocess.Popen([sys.executable, "-m", "cifarbench", "classify", str(src),
                             "--workers", "2", "--batch-size", "8", "-o", str(tmp_path / "out.csv")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    def pool_running() -> bool:  # the tracker, and the forkserver with at least one decode worker forked
        kids = _children(proc.pid)
        return any("resource_tracker" in c for _, c in kids) and \
            any("forkserver" in c and _children(k) for k, c in kids)

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not pool_running():
        time.sleep(0.05)
    assert proc.poll() is None, "classify ended before its process pool could be killed"
    assert pool_running(), "the process pool never started"
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert b"leaked" not in err, err.decode(errors="replace")
