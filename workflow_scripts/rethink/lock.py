"""One trainer per segment: an exclusive lock on ``<resume folder>/.lock`` for as long as the
training process lives.

Two trainers of one segment (a job resubmitted while an orphan of a killed Snakemake still runs,
after ``--unlock``) would write the same resume checkpoints and output. The lock is an advisory
``flock``: the kernel releases it when its process ends however it ends (kill -9 included), so
a stale lock file never blocks anything. File systems without flock (some Lustre mounts) get a
warning and no lock.

A second trainer waits (``wait_s``, default: as long as the holder lives, polling every
``poll_s``), saying once who holds the lock; then it owns the segment and reads what the holder
left: the finished output (rethink.loop then trains nothing) or its newest resume checkpoint. The
holder deletes the resume folder, lock file included, when it finishes, so the waiter checks that
the lock it got is still the file at the path, else it locks the new one.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class SegmentBusy(RuntimeError):
    """Another process trains this segment now."""


class SegmentLock:
    def __init__(
        self, resume_dir: str | os.PathLike, who: str, log=print, wait_s: float | None = None, poll_s: float = 5.0
    ):
        self.path = Path(resume_dir) / LOCK_NAME
        self.who, self.log, self.fd = who, log, None
        self.wait_s, self.poll_s = wait_s, poll_s
        self.waited_s = 0.0  # how long this trainer waited for another one

    def __enter__(self) -> SegmentLock:
        t0, told = time.monotonic(), False
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
                os.close(fd)
                waited = time.monotonic() - t0
                if self.wait_s is not None and waited >= self.wait_s:
                    raise SegmentBusy(
                        f"{self.who}: another trainer holds this segment ({holder}; lock {self.path}) after "
                        f"{waited:.0f} s of waiting: two trainers would write the same checkpoints. Wait for it "
                        "to end, or end it (kill that pid on that host); its lock goes with it"
                    ) from None
                if not told:
                    self.log(
                        f"another trainer holds this segment ({holder}; lock {self.path}): waiting for it "
                        "to end, then taking over what it left"
                    )
                    told = True
                time.sleep(self.poll_s)
                continue
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOLCK):
                    raise
                self.log(
                    f"WARNING: {self.path}: the file system has no flock ({e.strerror}); "
                    "nothing stops a second trainer of this segment"
                )
                return self
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder finished and removed the folder with its lock file: lock the new one
        self.waited_s = time.monotonic() - t0 if told else 0.0
        if told:
            self.log(f"the other trainer ended after {self.waited_s:.0f} s of waiting; this one owns the segment now")
        os.ftruncate(fd, 0)
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {stamp}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock; the file stays (harmless, see above)
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False
