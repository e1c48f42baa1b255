"""One trainer per segment: an exclusive lock on ``<resume folder>/.lock`` for as long as the
training process lives.

Two trainers of one segment (a job resubmitted while an orphan of a killed Snakemake still runs,
after ``--unlock``) would write the same resume checkpoints and output. The lock is an advisory
``flock``: the kernel releases it when its process ends however it ends (kill -9 included), so
a stale lock file never blocks anything. File systems without flock (some Lustre mounts) get a
warning and no lock.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class SegmentBusy(RuntimeError):
    """Another process trains this segment now."""


class SegmentLock:
    def __init__(self, resume_dir: str | os.PathLike, who: str, log=print):
        self.path = Path(resume_dir) / LOCK_NAME
        self.who, self.log, self.fd = who, log, None

    def __enter__(self) -> SegmentLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            os.close(fd)
            raise SegmentBusy(f"{self.who}: another trainer holds this segment ({holder}; lock {self.path}): "
                              "two trainers would write the same checkpoints. Wait for it to end, or end it "
                              "(kill that pid on that host); its lock goes with it") from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOLCK):
                raise
            self.log(f"WARNING: {self.path}: the file system has no flock ({e.strerror}); "
                     "nothing stops a second trainer of this segment")
            return self
        os.ftruncate(fd, 0)
        stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {stamp}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock; the file stays (harmless, see above)
            self.fd = None
