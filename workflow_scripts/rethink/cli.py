"""What every rule's script shares: read the job's JSON spec from `--spec` (built by rethink.paths)."""
from __future__ import annotations

import argparse
import json
import sys


def read_spec(prog: str, doc: str | None, required: tuple[str, ...] = ()) -> dict:
    """Parse `--spec '<json>'`; a spec that is not JSON or lacks a required field ends the
    process with one line naming `prog` and the problem."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="the job's JSON spec (see rethink.paths.Paths)")
    args = ap.parse_args()
    try:
        spec = json.loads(args.spec)
    except json.JSONDecodeError as e:
        sys.exit(f"{prog}: error: --spec is not valid JSON: {e}")
    missing = [k for k in required if k not in spec]
    if missing:
        sys.exit(f"{prog}: error: the spec lacks field(s) {', '.join(missing)}")
    return spec
