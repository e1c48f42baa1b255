"""What every rule's script shares: the job's spec, from `--config <snapshot> --job <key>` as the
rules pass it (rethink.jobs), or from `--spec <JSON or file>` by hand; and the job's ledger row
(rethink.ledger), opened when the job starts and closed with its exit status (`job`, `recorded`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from . import ledger


def read_spec(prog: str, doc: str | None, required: tuple[str, ...] = ()) -> dict:
    """The job's spec. A snapshot that cannot be read, a job not in its plan, a spec that is not
    JSON or lacks a required field end the process with one line naming `prog` and the problem.
    With `--print-spec` the spec is printed and the process ends."""
    return _spec(prog, _args(prog, doc), required)[0]


@contextlib.contextmanager
def job(prog: str, doc: str | None, required: tuple[str, ...] = ()):
    """The job's spec (`read_spec`), with the job's ledger row open around the block: opened as
    soon as the snapshot names the results folder (before the plan is rebuilt; a script imports
    its heavy modules inside the block), closed by the block's exit status (sys.exit's code, 1 for
    an exception). A spec run by hand, or printed, has no row."""
    args = _args(prog, doc)
    results = _results_of(args.config) if args.job and not args.print_spec else None
    with ledger.recording(results, rule=str(args.job).split("/")[0], job=args.job) as row:
        spec, specs = _spec(prog, args, required)
        if row is not None:
            row.update(**_row_fields(specs, args.job, spec))
        yield spec


def _results_of(snapshot: str) -> str | None:
    from . import jobs

    try:
        return jobs.read_snapshot(snapshot)[0]["results"]
    except (jobs.JobError, KeyError, TypeError):
        return None  # _spec says what is wrong with it


@contextlib.contextmanager
def recorded(rule: str, argv: list[str]):
    """The ledger row of a results job (collect, report) whose command line names `--job` and the
    snapshot (`--config`); nothing is recorded without both (`snakemake figures`, by hand)."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--config")
    ap.add_argument("--job")
    a, _ = ap.parse_known_args(argv)
    results = None
    if a.config and a.job:
        from . import jobs

        with contextlib.suppress(jobs.JobError, KeyError, TypeError):
            results = jobs.read_snapshot(a.config)[0]["results"]
    with ledger.recording(results, rule=rule, job=a.job, gpus=0):
        yield


def _row_fields(specs, key: str, spec: dict) -> dict:
    """What the ledger row of job `key` (its spec `spec`, of the snapshot's JobSpecs `specs`) says
    about it (rethink.ledger.ROW_FIELDS)."""
    rule = key.split("/")[0]
    out = {
        "rule": rule,
        "job": key,
        "identity": spec.get("identity"),
        "gpus": 0,
        "rehearsal": bool(specs.cfg.get("rehearsal", False)),
    }
    if "family" in spec and "line" in spec:
        from .resources import REHEARSAL_SIGNAL_S, SIGNAL_GRACE_S

        recipe = spec["run"]["recipe"]
        it_from, it_to = (spec["start"], spec["end"]) if "start" in spec else (spec["iteration"],) * 2
        out.update(
            run=specs.plan.payer(spec["family"], spec["line"], it_to),
            family=spec["family"],
            line=spec["line"],
            from_iter=it_from,
            to_iter=it_to,
            gpus=int(
                spec["run"]["rehearsal"]["gpus"]  # a rehearsal trains on the CPU: the GPUs it simulates
                if "rehearsal" in spec["run"]
                else recipe.get("gpus" if "start" in spec else "eval_gpus", 0)
            ),
            signal_s=(REHEARSAL_SIGNAL_S if out["rehearsal"] else SIGNAL_GRACE_S) if "start" in spec else None,
        )
    elif rule == "pretrain":
        out.update(to_iter=spec.get("iterations"), gpus=int(spec.get("gpus", 0)))
    return out


def _args(prog: str, doc: str | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="the config snapshot the workflow wrote (<workdir>/specs/config-<hash>.json)")
    ap.add_argument("--job", help="the job: <rule>/<wildcard values> (rethink.jobs.key)")
    ap.add_argument("--spec", help="instead: the job's spec as JSON text or a JSON file")
    ap.add_argument("--print-spec", action="store_true", help="print the spec as JSON and stop")
    args = ap.parse_args()
    if bool(args.spec) == bool(args.config or args.job) or bool(args.config) != bool(args.job):
        ap.error("give --config SNAPSHOT --job KEY, or --spec")
    return args


def _spec(prog: str, args: argparse.Namespace, required: tuple[str, ...]):
    """(spec, the snapshot's rethink.job_specs.JobSpecs or None) of the parsed command line (read_spec)."""
    specs = None
    if args.spec:
        spec = _spec_arg(prog, args.spec)
    else:
        from . import jobs

        try:
            specs = jobs.load(args.config)
            spec = jobs.spec(specs, args.job)
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
    return spec, specs


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
