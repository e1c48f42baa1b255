"""Benchmark: `snakemake -n` on config.yaml vs a bare Snakefile that plans the same number of
jobs (same DAG shape: chains of segments, one evaluation per segment, one collect), measured
in the same run. Also prints planned training iterations / naive sum of stand-alone runs.

    .venv/bin/python bench/bench_dryrun.py [--repeat 3]

Goals (issue: grid and plan): ratio <= 1.5, absolute < 3 s on a 2-core machine; iterations ratio <= 0.5.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rethink import config, grid, plan

ROOT = Path(__file__).resolve().parents[1]

BARE = """
N_CHAINS = {chains}
LENGTHS = {lengths}

rule all:
    input: "collect.txt"

rule collect:
    input: [f"m/{{c}}/{{i}}.json" for c in range(N_CHAINS) for i in range(1, LENGTHS[c] + 1)]
    output: "collect.txt"
    shell: "touch {{output}}"

rule evaluate:
    input: "ck/{{c}}/{{i}}.pth"
    output: "m/{{c}}/{{i}}.json"
    shell: "touch {{output}}"

def prev(wc):
    i = int(wc.i)
    return [] if i == 1 else [f"ck/{{wc.c}}/{{i - 1}}.pth"]

rule segment:
    input: prev
    output: "ck/{{c}}/{{i}}.pth"
    shell: "touch {{output}}"
"""


def time_dryrun(args, cwd, repeat, quiet=False):
    """(best wall seconds, jobs, best CPU seconds) over `repeat` dry runs. The CPU time (user +
    system of the snakemake process) is what to compare on a shared machine: wall time there
    includes waiting for a core."""
    best = best_cpu = float("inf")
    jobs = None
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--cores", "1", *(["-q"] if quiet else []), *args],
            cwd=cwd,
            capture_output=True,
            text=True,
        )
        best = min(best, time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best_cpu = min(best_cpu, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        for line in proc.stdout.splitlines():
            if line.startswith("total"):
                jobs = int(line.split()[1])
    return best, jobs, best_cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cfg = config.load(ROOT / "config.yaml")
    p = plan.Plan(grid.build(cfg, "config.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        ours_args = ["--snakefile", str(ROOT / "Snakefile"), "--configfile", str(ROOT / "config.yaml")]
        ours, ours_jobs, ours_cpu = time_dryrun(ours_args, tmp, args.repeat)
        ours_q, _, ours_q_cpu = time_dryrun(ours_args, tmp, args.repeat, quiet=True)
        # the same number of train and eval jobs, as chains of the same lengths
        lines = {}
        for s in p.segments.values():
            lines[(s.family, s.line)] = lines.get((s.family, s.line), 0) + 1
        bare_dir = Path(tmp) / "bare"
        bare_dir.mkdir()
        (bare_dir / "Snakefile").write_text(BARE.format(chains=len(lines), lengths=list(lines.values())))
        bare, bare_jobs, bare_cpu = time_dryrun([], bare_dir, args.repeat)
        bare_q, _, bare_q_cpu = time_dryrun([], bare_dir, args.repeat, quiet=True)
    print(
        f"snakemake -n, config.yaml: {ours:.2f} s for {ours_jobs} jobs, CPU {ours_cpu:.2f} s "
        f"(-q, planning only: {ours_q:.2f} s, CPU {ours_q_cpu:.2f} s)"
    )
    print(
        f"snakemake -n, bare Snakefile: {bare:.2f} s for {bare_jobs} jobs, CPU {bare_cpu:.2f} s "
        f"(-q: {bare_q:.2f} s, CPU {bare_q_cpu:.2f} s)"
    )
    print(
        f"ratio (ours / bare): {ours / bare:.2f}, with -q {ours_q / bare_q:.2f}; "
        f"in CPU time {ours_cpu / bare_cpu:.2f}, "
        f"with -q {ours_q_cpu / bare_q_cpu:.2f}   goal <= 1.5;  absolute goal < 3 s: {'met' if ours < 3 else 'NOT met'}"
    )
    ratio = p.total_iterations / p.standalone_iterations
    print(
        f"planned training iterations / stand-alone sum, whole grid: {p.total_iterations:,} / "
        f"{p.standalone_iterations:,} = {ratio:.3f}"
    )
    # the goal was set for the experiments whose schedules share trunks (Tables 1-2, Figures 1, 3, 4)
    shared = [f for f, members in p.grid.families.items() if len(members) > 1]
    planned = sum(s.iterations for s in p.segments.values() if s.family in shared)
    alone = sum(r.iterations for f in shared for r in p.grid.families[f])
    print(
        f"  families with several schedules ({len(shared)}): {planned:,} / {alone:,} = {planned / alone:.3f}"
        "   goal <= 0.5"
    )


if __name__ == "__main__":
    main()
