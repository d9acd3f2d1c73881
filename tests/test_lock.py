"""The output lock: held -> LockHeld (exit 5); released or stale -> free; works without flock too."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from cifarbench.errors import ExitStatus, LockHeld
from cifarbench.runs import lock as lockmod
from cifarbench.runs.lock import OutputLock, lock_path_for
from conftest import run_unprivileged


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A live process that is not us, and ours to lose: never the parent (a mutant signalling it would kill pytest's
    runner, not the test)."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_lock_file_lives_beside_the_output_and_goes_away(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "labels.csv"
    with OutputLock(out) as lk:
        assert lk.path == lock_path_for(out) == tmp_path / "sub" / "labels.csv.lock"
        info = json.loads(lk.path.read_text())
        assert info["pid"] == os.getpid()
    assert not lk.path.exists()


def test_second_holder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    with OutputLock(out):
        with pytest.raises(LockHeld) as exc:
            OutputLock(out).acquire()
        assert exc.value.exit_status == ExitStatus.LOCKED
        assert f"pid {os.getpid()}" in str(exc.value) and "labels.csv.lock" in str(exc.value)
    OutputLock(out).acquire()  # free again once released


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    code = textwrap.dedent(f"""
        import sys, time
        from cifarbench.runs.lock import OutputLock
        with OutputLock({str(out)!r}):
            print("locked", flush=True)
            sys.stdin.readline()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "locked"
        with pytest.raises(LockHeld, match=f"pid {child.pid}"):
            OutputLock(out).acquire()
    finally:
        child.communicate("\n", timeout=30)
    with OutputLock(out):
        pass


def test_stale_lock_from_dead_process_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    lock_path_for(out).write_text(json.dumps({"pid": _dead_pid(), "started": "yesterday"}))
    with OutputLock(out) as lk:
        assert json.loads(lk.path.read_text())["pid"] == os.getpid()
    assert not lock_path_for(out).exists()


def test_without_flock_the_pid_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, live_pid: int) -> None:
    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lockmod.fcntl, "flock", no_flock)
    out = tmp_path / "labels.csv"
    lock_path_for(out).write_text(json.dumps({"pid": live_pid}))  # a live process that is not us
    with pytest.raises(LockHeld, match=f"pid {live_pid}"):
        OutputLock(out).acquire()
    lock_path_for(out).write_text(json.dumps({"pid": _dead_pid()}))
    with OutputLock(out):
        pass
    lock_path_for(out).write_text("garbage")
    with OutputLock(out):
        pass


def _disk_full(*args: object) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_locking_leaves_no_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "labels.csv"
    monkeypatch.setattr(lockmod.os, "pwrite", _disk_full)
    with OutputLock(out) as lk:  # with flock the owner line is only for messages: the lock still holds
        with pytest.raises(LockHeld):
            OutputLock(out).acquire()
    assert not lk.path.exists()
    monkeypatch.setattr(lockmod.fcntl, "flock", lambda fd, op: (_ for _ in ()).throw(OSError(errno.ENOLCK, "no locks")))
    with pytest.raises(OSError, match="No space"):  # without flock the pid is the lock: it must be written
        OutputLock(out).acquire()
    assert list(tmp_path.iterdir()) == []  # and the 0-byte file it created is gone


def test_a_lock_held_by_another_is_never_removed_by_the_loser(tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    with OutputLock(out) as lk:
        for _ in range(3):
            with pytest.raises(LockHeld):
                OutputLock(out).acquire()
        assert json.loads(lk.path.read_text())["pid"] == os.getpid()


def _no_flock(fd: int, op: int) -> None:
    raise OSError(errno.ENOLCK, "No locks available")


def test_without_flock_a_lock_from_another_host_is_held_whatever_its_pid(tmp_path: Path, live_pid: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A pid cannot be checked on another host (an NFS share): that lock is assumed held, even if the pid is dead here."""
    import socket

    monkeypatch.setattr(lockmod.fcntl, "flock", _no_flock)
    out = tmp_path / "labels.csv"
    dead = _dead_pid()
    lock_path_for(out).write_text(json.dumps({"pid": dead, "host": "another-host.example", "started": "08:00"}))
    with pytest.raises(LockHeld) as e:
        OutputLock(out).acquire()
    assert f"(pid {dead}, started 08:00)" in str(e.value) and e.value.exit_status == ExitStatus.LOCKED
    lock_path_for(out).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))  # this host, dead: stale
    with OutputLock(out) as lk:
        assert json.loads(lk.path.read_text())["pid"] == os.getpid()
    lock_path_for(out).write_text(json.dumps({"pid": live_pid, "host": socket.gethostname()}))  # here, alive
    with pytest.raises(LockHeld):
        OutputLock(out).acquire()
    lock_path_for(out).write_text(json.dumps({"pid": os.getpid(), "host": "another-host.example"}))  # our own pid
    with pytest.raises(LockHeld):  # on another host it is another process, though it has our number
        OutputLock(out).acquire()
    lock_path_for(out).write_text(json.dumps({"pid": str(live_pid)}))  # not a pid: stale, taken over
    with OutputLock(out):
        pass


def test_pid_alive_for_another_users_process_and_for_no_process() -> None:
    """kill(pid, 0) answers EPERM for a live process of another user: alive. As root the test drops to nobody."""
    assert lockmod.pid_alive(os.getpid()) and not lockmod.pid_alive(_dead_pid())
    assert not lockmod.pid_alive(0) and not lockmod.pid_alive(-1)  # 0 and -1 would signal a whole group
    assert run_unprivileged(lambda: lockmod.pid_alive(1))  # init: alive, owned by root, not ours


def test_without_flock_another_users_live_pid_holds_the_lock(unprivileged_tmp: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockmod.fcntl, "flock", _no_flock)
    out = unprivileged_tmp / "labels.csv"

    def attempt() -> str:
        lock_path_for(out).write_text(json.dumps({"pid": 1}))  # pid 1: live, and not this (unprivileged) user's
        try:
            OutputLock(out).acquire()
        except LockHeld as exc:
            return str(exc)
        return "acquired"

    assert "(pid 1)" in run_unprivileged(attempt)


@pytest.mark.parametrize("code, held", [(errno.EWOULDBLOCK, True), (errno.EAGAIN, True), (errno.EACCES, True),
                                        (errno.ENOLCK, False), (errno.EINVAL, False), (errno.ENOTSUP, False)])
def test_flock_errors_mean_held_or_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int,
                                               held: bool) -> None:
    def flock(fd: int, op: int) -> None:
        assert op == lockmod.fcntl.LOCK_EX | lockmod.fcntl.LOCK_NB  # never a blocking wait
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(lockmod.fcntl, "flock", flock)
    out = tmp_path / "labels.csv"
    if held:  # another process has it: refused, and its file is left as it was
        with pytest.raises(LockHeld, match=r"labels.csv is being written by another cifarbench run \(another process\)"):
            OutputLock(out).acquire()
        lock_path_for(out).write_text('{"started": "08:00"}')
        with pytest.raises(LockHeld, match=r"\(another process, started 08:00\)"):
            OutputLock(out).acquire()
        assert lock_path_for(out).read_text() == '{"started": "08:00"}'
    else:  # no flock here: the (absent) pid decides, so it is ours, with our pid written
        with OutputLock(out) as lk:
            info = json.loads(lk.path.read_text())
            assert info["pid"] == os.getpid() and info["tool"] == "cifarbench classify" and info["host"]


def test_owner_lines_that_are_not_an_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockmod.fcntl, "flock", _no_flock)
    out = tmp_path / "labels.csv"
    for text in ("[1, 2]", "", "   \n", '{"pid": null}', '{"pid": 1.5}', "\xff\xfe garbage"):
        lock_path_for(out).write_text(text, encoding="utf-8", errors="surrogateescape")
        with OutputLock(out):  # none of them names a live process: taken over
            pass


def test_message_names_pid_and_start(tmp_path: Path, live_pid: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lockmod.fcntl, "flock", _no_flock)
    out = tmp_path / "labels.csv"
    lock_path_for(out).write_text(json.dumps({"pid": live_pid, "started": "2026-01-01T08:00:00"}))
    with pytest.raises(LockHeld) as e:
        OutputLock(out).acquire()
    assert str(e.value) == (f"{out} is being written by another cifarbench run (pid {live_pid}, started "
                            f"2026-01-01T08:00:00); lock file {lock_path_for(out)}. Try again when it has finished.")


def test_a_lock_file_replaced_at_every_try_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tries: list[int] = []
    monkeypatch.setattr(OutputLock, "_same_file", lambda self, fd: tries.append(fd) or False)
    with pytest.raises(LockHeld, match="keeps being replaced by another process"):
        OutputLock(tmp_path / "labels.csv").acquire()
    assert len(tries) == 50


def test_release_is_idempotent_and_spares_a_replaced_file(tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    lk = OutputLock(out)
    lk.release()  # never acquired: nothing to do
    lk.acquire()
    lk.path.unlink()
    lk.path.write_text("someone else's")  # replaced while we held the old inode
    lk.release()
    lk.release()
    assert lk.path.read_text() == "someone else's"


def test_owner_line_format_mode_and_nested_directories(tmp_path: Path) -> None:
    import re
    import stat

    out = tmp_path / "a" / "b" / "labels.csv"  # two missing levels
    old = os.umask(0)
    try:
        with OutputLock(out) as lk:
            assert stat.S_IMODE(lk.path.stat().st_mode) == 0o644  # rw-r--r--, whatever the umask allowed
            info = json.loads(lk.path.read_text())
    finally:
        os.umask(old)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", info["started"]), info["started"]
    assert set(info) == {"pid", "host", "started", "tool"}


def test_a_longer_stale_owner_line_is_replaced_whole(tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    lock_path_for(out).write_text(json.dumps({"pid": _dead_pid(), "note": "x" * 5000}))
    with OutputLock(out) as lk:
        info = json.loads(lk.path.read_text())  # no tail of the old line left after ours
        assert info["pid"] == os.getpid() and "note" not in info


def test_release_survives_an_unlink_or_close_that_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lk = OutputLock(tmp_path / "labels.csv")
    lk.acquire()
    fd = lk._fd
    assert fd is not None

    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(lockmod.os, "unlink", refuse)
    monkeypatch.setattr(lockmod.os, "close", refuse)
    lk.release()  # best effort: neither error escapes
    assert lk._fd is None
    monkeypatch.undo()
    os.close(fd)


def test_a_lock_file_removed_between_open_and_lock_is_opened_again(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous holder's release unlinks the file after we opened it: locking that orphan inode would let a
    third run lock a new file beside us, so acquire opens the path again."""
    out = tmp_path / "labels.csv"
    real_flock, calls = lockmod.fcntl.flock, []

    def flock_after_a_release(fd: int, op: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            os.unlink(lock_path_for(out))  # the other run's release, just now
        real_flock(fd, op)

    monkeypatch.setattr(lockmod.fcntl, "flock", flock_after_a_release)
    with OutputLock(out) as lk:
        assert len(calls) == 2 and lk.path.exists()  # locked the file that is really there
        assert os.fstat(lk._fd).st_ino == lk.path.stat().st_ino  # type: ignore[arg-type]
