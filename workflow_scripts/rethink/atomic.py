"""Atomic JSON writes: a temp file in the target's folder, then os.replace, so a reader sees the
whole file or none. Standard library only: the workflow imports it when it parses the config."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json_atomic(path, obj, **kw) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, **kw)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
