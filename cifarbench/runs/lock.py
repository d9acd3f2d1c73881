"""An output lock: one ``classify`` run per output file at a time, no ``flock(1)`` needed in cron.

The lock is ``<output>.lock`` beside the output, held with ``fcntl.flock``: the kernel drops it
when its process dies, however it dies, so a lock file left behind by a killed run never
blocks the next one. The file holds the owner's pid and start time, only for the message.
Where the filesystem has no ``flock`` (some network mounts), the pid is checked instead: a
lock whose pid is not running on this host is stale and taken over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from cifarbench.errors import LockHeld

LOCK_SUFFIX = ".lock"


def lock_path_for(target: str | os.PathLike[str]) -> Path:
    t = Path(target)
    return t.with_name(t.name + LOCK_SUFFIX)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """Context manager; raises ``LockHeld`` (exit code 5) if another live run holds ``target``."""

    def __init__(self, target: str | os.PathLike[str]) -> None:
        self.target = Path(target)
        self.path = lock_path_for(target)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):  # retried only when the file was replaced under us
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            ours = False  # True once this process holds the lock file: then a failure removes it
            try:
                flocked = self._flock(fd)
                if not flocked and self._owner_alive(fd):
                    raise self._held(fd)
                if not self._same_file(fd):  # removed or replaced between open and lock: try again
                    os.close(fd)
                    continue
                ours = True
                self._write_owner(fd, required=not flocked)
            except BaseException:
                if ours and self._same_file(fd):  # e.g. disk full while writing the owner: no 0-byte lock left
                    with contextlib.suppress(OSError):
                        os.unlink(self.path)
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            self._fd = fd
            return
        raise LockHeld(f"cannot take the lock {self.path}: it keeps being replaced by another process")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if self._same_file(self._fd):
                os.unlink(self.path)  # unlinked while still locked, so no one can lock the old inode meanwhile
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    # ------------------------------------------------------------------ internals
    def _flock(self, fd: int) -> bool:
        """True if locked; raises LockHeld if another process holds it; False if flock is unsupported."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise self._held(fd) from None
            return False  # ENOLCK / EINVAL / ENOTSUP: fall back to the pid in the file

    def _owner(self, fd: int) -> dict:
        try:
            raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            info = json.loads(raw) if raw.strip() else {}
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def _owner_alive(self, fd: int) -> bool:
        info = self._owner(fd)
        pid = info.get("pid")
        if not isinstance(pid, int):
            return False
        if info.get("host") not in (None, socket.gethostname()):
            return True  # cannot check a pid on another host (even one numbered as ours): assume it runs
        return pid != os.getpid() and pid_alive(pid)

    def _held(self, fd: int) -> LockHeld:
        info = self._owner(fd)
        who = f"pid {info['pid']}" if "pid" in info else "another process"
        if info.get("started"):
            who += f", started {info['started']}"
        return LockHeld(f"{self.target} is being written by another cifarbench run ({who}); "
                        f"lock file {self.path}. Try again when it has finished.")

    def _same_file(self, fd: int) -> bool:
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def _write_owner(self, fd: int, required: bool = True) -> None:
        """Record who holds the lock. With flock it only words the message, so a full disk is no reason
        to fail; without flock the pid is the lock, so writing it must succeed."""
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "tool": "cifarbench classify"}
        data = (json.dumps(info) + "\n").encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        except OSError:
            if required:
                raise
