"""``classify --engine ray`` under faults (issue 25): a worker killed, SIGINT, SIGTERM, kill -9 of the driver.

Every run is the real CLI in a fresh process with a private local Ray (127.0.0.1 only), on a tree of
small PNGs, compared with the local engine's output of the same tree in the same run:

* ``worker-kill``: ``-q -o -``; a ``ray::MapWorker``/decode worker is SIGKILLed once one appears.
  Target: exit 0, stdout byte-identical to the local engine's, stderr empty.
* ``sigint`` / ``sigterm``: ``-q -o -`` and ``-q -o FILE`` (FILE holding a previous output); the
  signal goes to the driver once a Ray worker appears. Target: exit 130, stdout a prefix of the
  local engine's (nothing of Ray's), FILE unchanged, no ``*** SIGTERM received`` on stderr.
* ``kill9``: the driver is SIGKILLed mid-run; seconds until no process of its Ray session is left.
* ``listen``: the TCP ports the private Ray listens on, and whether all are on 127.0.0.1.

    python benchmarks/reliability/bench_ray_faults.py --files 400 --out benchmarks/reliability/results-ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from bench_hostile import _cpu_line  # noqa: E402  (this folder's scripts write one CPU line)
MODEL = ["--model", "baseline-cnn", "--backend", "onnx-int8"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _procs(*markers: bytes) -> dict[int, bytes]:
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/cmdline", "rb") as fh:
                    cmd = fh.read()
            except OSError:
                continue
            if any(cmd.startswith(m) or m in cmd for m in markers):
                out[int(d)] = cmd
    return out


def _alive(pid: int) -> bool:
    """Running, not a zombie (a dead process whose parent has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _cmd(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _descendants(pid: int) -> set[int]:
    """The process tree below ``pid``, read the way the Ray fault test reads it."""
    from test_ray_faults import _children

    return set(_children(pid))


def _wait_worker(proc: subprocess.Popen, marker: bytes, timeout: float = 180) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for pid, cmd in _procs(marker).items():
            if pid in _descendants(proc.pid):
                return pid
        time.sleep(0.05)
    return None


def _start(root: Path, out: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cifarbench", "classify", str(root), *MODEL, "--engine", "ray",
                             "-q", "-o", out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=REPO)


def worker_kill(root: Path, local: bytes) -> dict[str, Any]:
    p = _start(root, "-")
    victim = _wait_worker(p, b"ray::MapWorker")
    if victim:
        os.kill(victim, signal.SIGKILL)
    out, err = p.communicate(timeout=600)
    return {"killed": bool(victim), "exit": p.returncode, "stdout_identical": out == local,
            "stdout_bytes": len(out), "stderr": err.decode(errors="replace")[-300:]}


def interrupt(root: Path, local: bytes, sig: int, tmp: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for target in ("-", "file"):
        dest = tmp / f"prev-{sig}.csv"
        dest.write_bytes(b"previous output\n")
        p = _start(root, "-" if target == "-" else str(dest))
        hit = _wait_worker(p, b"ray::MapWorker")
        time.sleep(0.5)
        t0 = time.monotonic()
        p.send_signal(sig)
        out, err = p.communicate(timeout=600)
        res[target] = {"worker_seen": bool(hit), "exit": p.returncode, "seconds_to_exit": round(time.monotonic() - t0, 2),
                       "stdout_prefix_of_local": local.startswith(out), "stdout_bytes": len(out),
                       "ray_text_on_stdout": b"raylet" in out or b"ray::" in out,
                       "sigterm_banner": b"SIGTERM received" in err,
                       "previous_output_intact": dest.read_bytes() == b"previous output\n",
                       "stderr": err.decode(errors="replace")[-200:]}
    return res


def kill9(root: Path) -> dict[str, Any]:
    p = _start(root, "-")
    hit = _wait_worker(p, b"ray::MapWorker")
    session = None
    for pid in _descendants(p.pid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        for part in cmd.split(b"\0"):
            i = part.find(b"/session_")
            if i >= 0 and session is None:
                session = part[i + 1:].split(b"/")[0]
    ports = _listening(p.pid)
    tree = _descendants(p.pid)
    p.kill()
    p.communicate()
    t0 = time.monotonic()
    left: dict[int, bytes] = {}
    at5: list[str] = []
    while time.monotonic() - t0 < 120:
        left = {pid: cmd for pid, cmd in _procs(session).items()} if session else {}
        left.update({pid: _cmd(pid) for pid in tree if _alive(pid)})
        left = {pid: cmd for pid, cmd in left.items() if _alive(pid)}
        if not at5 and time.monotonic() - t0 > 5:
            at5 = sorted(c.split(b"\0")[0][:40].decode(errors="replace") for c in left.values()) or ["-"]
        if not left:
            break
        time.sleep(0.1)
    return {"worker_seen": bool(hit), "session": session.decode() if session else None,
            "processes_in_tree": len(tree), "seconds_until_none_left": round(time.monotonic() - t0, 2),
            "left_after_5s": [a for a in at5 if a != "-"],
            "left_after_120s": [c.split(b"\0")[0].decode(errors="replace") for c in left.values()],
            "listening": ports}


def _listening(driver: int) -> dict[str, Any]:
    """TCP listening sockets of the driver's process tree (the Ray fault test's reader of /proc/net/tcp{,6})."""
    from test_ray_faults import _LOOPBACK
    from test_ray_faults import _listening as listening

    addrs = listening({driver} | _descendants(driver))
    return {"count": len(addrs), "all_loopback": all(a in _LOOPBACK for a in addrs), "addresses": sorted(addrs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", default="kill,sigint,sigterm,kill9", help="comma-separated parts to run")
    args = ap.parse_args()
    from conftest import make_tree

    parts = args.only.split(",")

    with tempfile.TemporaryDirectory(prefix="cifarbench-rayfaults-") as t:
        tmp = Path(t)
        root = make_tree(tmp / "tree", per_class=max(1, args.files // 10), splits=("test",), seed=3)
        local = subprocess.run([sys.executable, "-m", "cifarbench", "classify", str(root), *MODEL, "-q", "-o", "-"],
                               capture_output=True, env=_env(), cwd=REPO, check=True).stdout
        results: dict[str, Any] = {"files": args.files, "cpu": _cpu_line()}
        results["worker_kill"] = worker_kill(root, local) if "kill" in parts else None
        print("worker_kill", results["worker_kill"], flush=True)
        results["sigint"] = interrupt(root, local, signal.SIGINT, tmp) if "sigint" in parts else None
        print("sigint", results["sigint"], flush=True)
        results["sigterm"] = interrupt(root, local, signal.SIGTERM, tmp) if "sigterm" in parts else None
        print("sigterm", results["sigterm"], flush=True)
        results["kill9"] = kill9(root) if "kill9" in parts else None
        print("kill9", results["kill9"], flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")




if __name__ == "__main__":
    main()
