"""Benchmark: what the campaign's ledger (rethink.ledger) costs a job, and what reading it costs.

1. A job's row: open (with its heartbeat thread), the first-iteration write, a checkpoint write
   and the close, as a training job does them; against a reference measured in the same run: the
   same three atomic JSON writes alone (rethink.atomic). Goal: < 10 ms per job.
2. The paper grid's ledger: one row per job of config.yaml's plan (1,470 jobs; every 20th
   training job also has a pre-empted attempt before it), written to a temp folder (synthetic
   rows, never results), then read (ledger.frame), written as jobs.csv and drawn as the timeline;
   against a reference: an empty figure of the same size saved the same way. Goal: < 10 s.

    .venv/bin/python bench/bench_ledger.py [--config config.yaml] [--rows 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rethink import config as rconfig
from rethink import grid as rgrid
from rethink import ledger, timeline
from rethink.atomic import write_json_atomic
from rethink.plan import Plan

ROOT = Path(__file__).resolve().parents[1]

GOAL_ROW_MS = 10.0
GOAL_DRAW_S = 10.0


def time_rows(folder: Path, n: int) -> tuple[float, float]:
    """(median ms of a job's row, median ms of the reference writes)."""
    job, ref = [], []
    for i in range(n):
        t = time.perf_counter()
        with ledger.recording(
            str(folder / "a"),
            rule="train_segment",
            job=f"train_segment/F/trunk/{i:07d}",
            run="r",
            gpus=8,
            from_iter=0,
            to_iter=100,
        ) as row:
            row.update(resumed_from=0, iter_reached=0, first_iter=time.time())
            row.flush()
            row.update(iter_reached=50, last_checkpoint=50)
            row.flush()
        job.append(time.perf_counter() - t)
        rec = dict(row.fields)
        t = time.perf_counter()
        for _ in range(3):
            write_json_atomic(folder / "b" / f"{i}.json", rec, sort_keys=True)
        ref.append(time.perf_counter() - t)
    return statistics.median(job) * 1e3, statistics.median(ref) * 1e3


def grid_rows(cfg: dict, results: Path) -> int:
    """One done row per job of the plan (every 20th training job pre-empted once first)."""
    plan = Plan(rgrid.build(cfg, "bench"))
    t, n = 1.7e9, 0

    def write(rule, key, run, gpus, seconds, **kw):
        nonlocal t, n
        row = {k: None for k in ledger.ROW_FIELDS}
        row.update(
            format=ledger.FORMAT,
            rule=rule,
            job=key,
            run=run,
            gpus=gpus,
            start=t,
            end=t + seconds,
            first_iter=t + 60,
            last_iter=t + seconds - 1,
            exit_code=0,
            outcome="done",
            host="bench",
        )
        row.update(kw)
        path = ledger.rows_dir(str(results)) / rule / f"{key.replace('/', '+')}@{n}.json"
        write_json_atomic(path, row)
        t += seconds / 32  # 32 jobs at once
        n += 1

    for i, seg in enumerate(sorted(plan.segments.values(), key=lambda s: (s.family, s.start, s.line))):
        run = plan.payer(seg.family, seg.line, seg.end)
        key = f"train_segment/{seg.family}/{seg.line}/{seg.end:07d}"
        secs = seg.iterations * 0.34
        if i % 20 == 0:
            write(
                key.split("/")[0],
                key,
                run,
                8,
                secs / 2,
                resumed_from=seg.start,
                iter_reached=seg.start + 900,
                outcome="pre-empted",
                exit_code=143,
            )
        write("train_segment", key, run, 8, secs, resumed_from=seg.start, iter_reached=seg.end)
    for ms in plan.milestones.values():
        write(
            "evaluate",
            f"evaluate/{ms.family}/{ms.line}/{ms.iteration:07d}",
            plan.payer(ms.family, ms.line, ms.iteration),
            1,
            420.0,
        )
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--rows", type=int, default=200, help="job rows to time in part 1")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        row_ms, ref_ms = time_rows(tmp / "rows", a.rows)
        print(
            f"a job's ledger row: {row_ms:.2f} ms (median of {a.rows}; open, 2 writes, close) vs "
            f"{ref_ms:.2f} ms for 3 atomic JSON writes: ratio {row_ms / ref_ms:.2f}; goal < {GOAL_ROW_MS:g} ms: "
            f"{'met' if row_ms < GOAL_ROW_MS else 'NOT met'}"
        )

        cfg = rconfig.load(a.config)
        n = grid_rows(cfg, tmp / "results")
        t = time.perf_counter()
        written = timeline.write_campaign(str(tmp / "results"))
        draw_s = time.perf_counter() - t
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = time.perf_counter()
        fig, ax = plt.subplots(figsize=(12, 0.18 * 61 + 1.5))
        fig.savefig(tmp / "empty.png", dpi=110)
        plt.close(fig)
        ref_s = time.perf_counter() - t
        print(
            f"the paper grid's ledger ({n} synthetic rows): read + jobs.csv + timeline {draw_s:.2f} s vs "
            f"{ref_s:.2f} s for an empty figure: ratio {draw_s / ref_s:.1f}; goal < {GOAL_DRAW_S:g} s: "
            f"{'met' if draw_s < GOAL_DRAW_S else 'NOT met'} ({', '.join(Path(w).name for w in written)})"
        )


if __name__ == "__main__":
    main()
