"""Where a pipeline's time goes: wall time per job kind (rule) from a Snakemake log.

    .venv/bin/python bench/bench_pipeline.py                 # the newest log under .snakemake/log
    .venv/bin/python bench/bench_pipeline.py --log FILE      # a given log (also `make tiny > FILE 2>&1`)
    .venv/bin/python bench/bench_pipeline.py --run [--cores N]
        runs the embedded default (profiles/tiny) from scratch in a temp workdir and results folder,
        then reads its log

Each job's time is from the timestamp Snakemake prints above its `rule`/`localrule` block to the
one above its `Finished jobid` line. Prints per rule: jobs, total, mean and longest job; then the
pipeline's wall time (first job start to last job end), the summed job time over wall x cores
(how busy the cores were), and the reference: the sum of job times divided by the cores, the wall
time if the cores had never waited. Goal (issue: a cheaper campaign): the tiny pipeline under
5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISH = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")
CORES = re.compile(r"^Provided cores: (\d+)$")


def parse(lines) -> tuple[dict, int | None]:
    """{jobid: (rule, start, end)} from a Snakemake log's lines, and the cores it was given."""
    stamp = None
    started: dict[str, tuple[str, dt.datetime]] = {}
    pending_rule = None
    jobs: dict[str, tuple[str, dt.datetime, dt.datetime]] = {}
    cores = None
    for raw in lines:
        line = raw.rstrip("\n")
        if m := STAMP.match(line):
            stamp = dt.datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif m := START.match(line):
            pending_rule = (m.group(1), stamp)
        elif (m := JOBID.match(line)) and pending_rule:
            started[m.group(1)] = pending_rule
            pending_rule = None
        elif m := FINISH.match(line):
            rule, start = started.get(m.group(1), (m.group(2), None))
            if start is not None:
                jobs[m.group(1)] = (rule, start, stamp)
        elif m := CORES.match(line):
            cores = int(m.group(1))
    return jobs, cores


def report(jobs: dict, cores: int | None, out=sys.stdout) -> float:
    if not jobs:
        raise SystemExit("no finished jobs in the log")
    per = collections.defaultdict(list)
    for rule, start, end in jobs.values():
        per[rule].append((end - start).total_seconds())
    print(f"{'rule':<24}{'jobs':>5}{'total s':>10}{'mean s':>9}{'max s':>8}", file=out)
    for rule, secs in sorted(per.items(), key=lambda kv: -sum(kv[1])):
        print(f"{rule:<24}{len(secs):>5}{sum(secs):>10.0f}{sum(secs) / len(secs):>9.1f}{max(secs):>8.0f}", file=out)
    first = min(s for _, s, _ in jobs.values())
    last = max(e for _, _, e in jobs.values())
    wall = (last - first).total_seconds()
    busy = sum(sum(v) for v in per.values())
    c = cores or 1
    print(
        f"pipeline wall {wall:.0f} s ({wall / 60:.1f} min) for {len(jobs)} jobs on {c} cores; "
        f"job time {busy:.0f} s, cores busy {busy / (wall * c):.0%}; "
        f"job time / cores {busy / c:.0f} s (wall if the cores never waited); goal < 300 s",
        file=out,
    )
    return wall


def newest_log() -> Path:
    logs = sorted((ROOT / ".snakemake" / "log").glob("*.snakemake.log"), key=os.path.getmtime)
    if not logs:
        raise SystemExit("no log under .snakemake/log; pass --log or --run")
    return logs[-1]


def run_tiny(cores: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            str(Path(sys.executable).parent / "snakemake"),
            "--profile",
            "profiles/tiny",
            "--cores",
            cores,
            "--config",
            f"workdir={tmp}/work",
            f"results={tmp}/results",
        ]
        print(" ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(proc.stderr[-4000:])
        return (proc.stdout + proc.stderr).splitlines()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", type=Path)
    ap.add_argument("--run", action="store_true")
    ap.add_argument("--cores", default="all")
    args = ap.parse_args()
    if args.run:
        lines = run_tiny(args.cores)
    else:
        path = args.log or newest_log()
        print(f"log: {path}")
        lines = path.read_text(errors="replace").splitlines()
    report(*parse(lines))


if __name__ == "__main__":
    main()
