"""What every rule's script shares: the job's spec, from `--config <snapshot> --job <key>` as the
rules pass it (rethink.jobs), or from `--spec <JSON or file>` by hand."""
from __future__ import annotations

import argparse
import json
import sys


def read_spec(prog: str, doc: str | None, required: tuple[str, ...] = ()) -> dict:
    """The job's spec. A snapshot that cannot be read, a job not in its plan, a spec that is not
    JSON or lacks a required field end the process with one line naming `prog` and the problem.
    With `--print-spec` the spec is printed and the process ends."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="the config snapshot the workflow wrote (<workdir>/specs/config-<hash>.json)")
    ap.add_argument("--job", help="the job: <rule>/<wildcard values> (rethink.jobs.key)")
    ap.add_argument("--spec", help="instead: the job's spec as JSON text or a JSON file")
    ap.add_argument("--print-spec", action="store_true", help="print the spec as JSON and stop")
    args = ap.parse_args()
    if bool(args.spec) == bool(args.config or args.job) or bool(args.config) != bool(args.job):
        ap.error("give --config SNAPSHOT --job KEY, or --spec")
    if args.spec:
        spec = _spec_arg(prog, args.spec)
    else:
        from . import jobs

        try:
            spec = jobs.spec(jobs.load(args.config), args.job)
        except jobs.JobError as e:
            sys.exit(f"{prog}: error: {e}")
    if not isinstance(spec, dict):
        sys.exit(f"{prog}: error: the spec is not a JSON object")
    missing = [k for k in required if k not in spec]
    if missing:
        sys.exit(f"{prog}: error: the spec lacks field(s) {', '.join(missing)}")
    if args.print_spec:
        print(json.dumps(spec, indent=1, sort_keys=True))
        sys.exit(0)
    return spec


def _spec_arg(prog: str, text: str):
    source = "--spec"
    if not text.lstrip().startswith("{"):  # a file
        source = text
        try:
            with open(text) as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            sys.exit(f"{prog}: error: --spec {source}: {e}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        sys.exit(f"{prog}: error: {source} is not valid JSON: {e}")
