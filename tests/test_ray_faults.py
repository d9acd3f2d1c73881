"""``--engine ray`` under faults (issue 25): Ray's lines never reach stdout, signals exit 130, kill -9 leaves nothing.

The unit tests need no running Ray; the three end-to-end ones each start a private Ray in a fresh
``classify`` process (seconds each), so they are few and marked slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from cifarbench.engines import ray_guard
from conftest import REPO, make_tree, run_cli

MODEL = ("--model", "baseline-cnn", "--backend", "onnx-int8")


def _fake_ray(session: Path) -> types.SimpleNamespace:
    node = types.SimpleNamespace(get_session_dir_path=lambda: str(session))
    return types.SimpleNamespace(_private=types.SimpleNamespace(worker=types.SimpleNamespace(_global_node=node)))


def test_raylet_messages_go_to_the_session_log_not_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # as conftest's clusters: read when Ray is first imported
    worker = pytest.importorskip("ray._private.worker")
    (tmp_path / "logs").mkdir()
    undo = ray_guard.route_driver_messages(_fake_ray(tmp_path))
    try:
        worker.print_to_stdstream({"lines": ["A worker died or was killed"], "pid": "raylet", "is_err": False}, False)
    finally:
        undo()
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "logs" / ray_guard.LOG_NAME).read_text() == "(raylet) A worker died or was killed\n"
    assert worker.print_to_stdstream is not None and worker.print_to_stdstream.__module__ == "ray._private.worker"


def test_signal_handlers_replaced_by_ray_init_are_put_back() -> None:
    def mine(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, mine)
    try:
        saved = ray_guard.save_signal_handlers()
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(s))  # what ray.init does
        ray_guard.restore_signal_handlers(saved)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


# --------------------------------------------------------------------------- a private Ray, end to end
def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "PYTHONPATH": str(REPO)}


def _children(pid: int) -> dict[int, bytes]:
    """Descendants of ``pid`` with their command lines."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_bytes().rsplit(b")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out: dict[int, bytes] = {}
    todo = [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            try:
                out[k] = Path(f"/proc/{k}/cmdline").read_bytes()
            except OSError:
                continue
            todo.append(k)
    return out


_LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def _listening(pids: set[int]) -> list[str]:
    """The addresses (hex, as /proc/net/tcp* writes them) that ``pids`` listen on over TCP."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            pass
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                out.append(f[1].split(":")[0])
    return out


def _start(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cifarbench", "classify", str(root), *MODEL, "--engine", "ray",
                             "-q", "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=REPO)


def _wait_for(proc: subprocess.Popen, marker: bytes, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for pid, cmd in _children(proc.pid).items():
            if cmd.startswith(marker):
                return pid
        time.sleep(0.05)
    raise AssertionError(f"no {marker!r} process")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    pytest.importorskip("ray.data")
    root = make_tree(tmp_path_factory.mktemp("rayfaults"), per_class=40, splits=("test",), seed=11)
    local = run_cli("classify", root, *MODEL, "-q", "-o", "-")
    assert local.exit_code == 0
    return root, local.stdout_bytes


@pytest.mark.slow
def test_a_killed_worker_changes_no_byte_of_stdout(tree: tuple[Path, bytes]) -> None:
    root, local = tree
    p = _start(root)
    os.kill(_wait_for(p, b"ray::MapWorker"), signal.SIGKILL)
    out, err = p.communicate(timeout=600)
    assert (p.returncode, err) == (0, b"") and out == local


@pytest.mark.slow
def test_sigterm_exits_130_with_nothing_of_ray_on_stdout(tree: tuple[Path, bytes]) -> None:
    root, local = tree
    p = _start(root)
    _wait_for(p, b"ray::MapWorker")
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert (p.returncode, err) == (130, b"interrupted\n") and local.startswith(out)


@pytest.mark.slow
def test_kill_9_of_the_driver_leaves_no_process_of_its_ray(tree: tuple[Path, bytes]) -> None:
    root, _ = tree
    p = _start(root)
    _wait_for(p, b"ray::MapWorker")
    deadline = time.monotonic() + 120  # the agents (the processes that lingered a minute) come up after the workers
    while not any(c.startswith(b"ray::") and b"Agent" in c for c in _children(p.pid).values()):
        assert time.monotonic() < deadline and p.poll() is None, "no Ray agent process started"
        time.sleep(0.05)
    ours = {pid: cmd for pid, cmd in _children(p.pid).items() if b"import os, select" not in cmd}  # not the reaper
    assert any(cmd.startswith(b"ray::") and b"Agent" in cmd for cmd in ours.values())  # the ones that lingered a minute
    listening = _listening({p.pid, *ours})
    assert listening and all(a in _LOOPBACK for a in listening), listening  # a private Ray: 127.0.0.1 only
    p.kill()
    p.communicate()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_running(pid) for pid in ours):
        time.sleep(0.1)
    assert not [ours[pid][:40] for pid in ours if _running(pid)]


def _running(pid: int) -> bool:
    """Alive and not a zombie (dead, waiting for init to reap it: it holds no memory and no port)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False
