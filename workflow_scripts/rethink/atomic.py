"""The one atomic write: a temp file in the target's folder, then os.replace, so a reader sees the
whole file or none, and a process killed while writing leaves the old file (and at most a hidden
`.<name>.*.tmp`). Standard library only: the workflow imports it when it parses the config."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path, mode: str = "w", fsync: bool = False):
    """Open a temp file next to `path` for writing; when the block ends without an error it
    replaces `path` (after an fsync if asked), otherwise it is removed. The file gets a normal
    file's mode (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path, obj, **kw) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, **kw)
        f.write("\n")
