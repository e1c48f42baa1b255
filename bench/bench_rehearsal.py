"""Per-job overhead of a rehearsal job started cold, as under SLURM (a fresh interpreter per job).

    .venv/bin/python bench/bench_rehearsal.py [-n 7]

On config.yaml's grid with `--config rehearsal=...` (rethink.rehearsal; compression 1e9, so the
simulated sleeps vanish), in a temp folder: the workflow prepares the first trunk segment of
R50-GN-random-coco_full-s0 and its evaluation; then, n times each, interleaved, a cold
`workflow_scripts/train.py --config <snapshot> --job train_segment/...` from process start to its
first iteration (the loop's "training iterations" line) and to its exit, a cold
`workflow_scripts/evaluate.py ... --job evaluate/...` to its exit, and the reference
`python -c "import torch"` (the floor of a real job; a rehearsal job imports no torch since its
engine trains plain numbers: rethink.engines.rehearsal_engine). Prints the median and max of each
and the ratio of the medians to the reference. Goal (issue: dress rehearsal): median < 3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
FAMILY = "R50-GN-random-coco_full-s0"


def spawn_until(cmd: list[str], marker: str | None, cwd: Path) -> tuple[float, float]:
    """(seconds from start to the first output line holding `marker`, seconds to exit)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first, out = float("nan"), []
    for line in proc.stdout:
        out.append(line)
        if marker and marker in line and first != first:
            first = time.perf_counter() - t0
    proc.wait()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{''.join(out)[-3000:]}")
    return first, time.perf_counter() - t0


def prepare(tmp: str) -> str:
    """Run the workflow in `tmp` up to the first trunk segment of FAMILY and its evaluation (rehearsal,
    compression 1e9); returns the config snapshot its jobs read."""
    metrics = f"results/rehearsal/metrics/{FAMILY}/trunk/iter_0020000.json"
    prep = subprocess.run(
        [
            PY,
            "-m",
            "snakemake",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            tmp,
            "--configfile",
            str(ROOT / "config.yaml"),
            "--cores",
            "1",
            "--notemp",
            metrics,
            "--config",
            'rehearsal={"compression": 1000000000}',
        ],
        cwd=tmp,
        capture_output=True,
        text=True,
    )
    if prep.returncode:
        sys.exit(f"preparing the rehearsal failed:\n{prep.stderr[-3000:]}")
    return str(next((Path(tmp) / "work" / "rehearsal" / "specs").glob("config-*.json")))


def job_command(script: str, snap: str, job: str) -> list[str]:
    """A cold job as a rule starts it: workflow_scripts/<script> --config <snapshot> --job <job>."""
    return [PY, str(ROOT / "workflow_scripts" / script), "--config", snap, "--job", job]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=7, help="cold starts of each job (default 7)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_rehearsal_") as tmp:
        tree = Path(tmp)
        snap = prepare(tmp)
        ckpt = tree / "work" / "rehearsal" / "checkpoints" / FAMILY / "trunk" / "iter_0020000.pth"
        train = job_command("train.py", snap, f"train_segment/{FAMILY}/trunk/20000")
        evaluate = job_command("evaluate.py", snap, f"evaluate/{FAMILY}/trunk/20000")
        ref = [PY, "-c", "import torch"]
        first, train_end, eval_end, ref_end = [], [], [], []
        for _ in range(a.n):
            os.unlink(ckpt)  # a job whose output exists trains nothing
            f, e = spawn_until(train, "training iterations", tree)
            first.append(f)
            train_end.append(e)
            eval_end.append(spawn_until(evaluate, None, tree)[1])
            ref_end.append(spawn_until(ref, None, tree)[1])
    med = {
        k: statistics.median(v)
        for k, v in (("first", first), ("train", train_end), ("eval", eval_end), ("ref", ref_end))
    }
    print(f"cold rehearsal jobs of config.yaml, {a.n} starts each ({os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')})")
    for name, key, vals in (
        ("training: start -> first iteration", "first", first),
        ("training: start -> exit (20k iterations, 4 checkpoints)", "train", train_end),
        ("evaluation: start -> exit", "eval", eval_end),
        ("reference: python -c 'import torch'", "ref", ref_end),
    ):
        print(f"  {name:58s} median {med[key]:5.2f} s  max {max(vals):5.2f} s  ratio {med[key] / med['ref']:.2f}")
    print(
        f"per-job overhead (training, start -> first iteration): median {med['first']:.2f} s "
        f"({'<' if med['first'] < 3 else '>='} 3 s goal), {med['first'] / med['ref']:.2f} x import torch"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
