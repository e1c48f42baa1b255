"""`snakemake grid`: the plan of the configured grid as a table and results/grid.csv."""

from __future__ import annotations

import json
import time

import pandas as pd

from conftest import ROOT, snakemake
from rethink import config, grid, ledger, metrics, plan
from rethink.paths import DIVERGED_MARKER, Paths


def _record(ms, owner, device_seconds):
    return {
        "family": ms.family,
        "line": ms.line,
        "iteration": ms.iteration,
        "runs": list(ms.runs),
        "owner": owner,
        "task": "mask_rcnn",
        "backbone": "R50",
        "norm": "GN",
        "init": "random",
        "data": "coco_full",
        "seed": 0,
        "variant": None,
        "lr": 0.02,
        "samples_seen": {"images": 1, "instances": 1, "pixels": 1},
        "pretrain_samples": None,
        "wall_seconds": 1.0,
        "device_seconds": device_seconds,
        "gpus": 8,
        "eval_seconds": 1.0,
        "diverged": False,
        "stats": {"bbox": {n: 1.0 for n in metrics.BOX_STATS}},
        "engine": "detectron2",
    }


def test_grid_summary_lists_every_run_with_status(tmp_path):
    cfg_path = ROOT / "config.yaml"
    cfg = config.load(cfg_path)
    p = plan.Plan(grid.build(cfg, "config.yaml"))
    paths = Paths(cfg, p)
    # one run done, one partial (a checkpoint on its path), the rest to do
    done, partial = "R50-GN-random-coco_full-2x-s0", "R101-GN-imagenet-coco_full-6x-s0"
    final = p.final_milestone(done)
    metrics.write(
        _record(final, done, 8 * 3600.0 * 50), tmp_path / paths.metrics(final.family, final.line, final.iteration)
    )
    seg = p.segments_of_run(partial)[0]
    ck = tmp_path / paths.checkpoint(seg.family, seg.line, seg.end)
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"x")

    # a run whose tail hit a non-finite loss (the loop leaves a marker in the segment's resume folder)
    diverged = "R50-SyncBN-random-coco_full-4x-s0"
    tail = p.segments_of_run(diverged)[-1]
    marker = tmp_path / paths.resume_dir(tail.family, tail.line, tail.end) / DIVERGED_MARKER
    marker.parent.mkdir(parents=True)
    marker.write_text('{"iteration": 350000}')

    # the ledger: the done run's last segment pre-empted at iteration 150,000 after a checkpoint at
    # 149,000 (1,000 iterations trained again, at the measured 0.5 s), then done; 8 GPUs each
    seg = p.final_segment(done)
    t = time.time() - 86400
    for i, (start, end, frm, to, outcome) in enumerate(
        [(t, t + 3600, 120_000, 150_000, "pre-empted"), (t + 4000, t + 7600, 149_000, 180_000, "done")]
    ):
        row = {k: None for k in ledger.ROW_FIELDS}
        row.update(
            format=ledger.FORMAT,
            rule="train_final",
            job=f"train_final/{done}",
            run=done,
            gpus=8,
            family=seg.family,
            line=seg.line,
            from_iter=seg.start,
            to_iter=seg.end,
            start=start,
            end=end,
            first_iter=start,
            last_iter=start + (to - frm) * 0.5 / 1000,
            resumed_from=frm,
            iter_reached=to,
            exit_code=0 if outcome == "done" else 143,
            outcome=outcome,
            host="elsewhere",
        )
        f = tmp_path / "results" / "campaign" / "rows" / "train_final" / f"{done}@{i}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(row))

    proc = snakemake(["grid"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "trunk sharing saves 8,400,000" in proc.stdout
    df = pd.read_csv(tmp_path / "results" / "grid.csv")
    assert {"run_id", "family", "schedule", "iterations", "trained_iterations", "gpu_hours", "status"} <= set(
        df.columns
    )
    assert len(df) == len(p.grid.runs) == 60
    assert (
        df["trained_iterations"].sum() == p.total_iterations == 13_752_000
    )  # the TTA row of Table 3 is an evaluation, not a run
    status = dict(zip(df["run_id"], df["status"]))
    assert status[done] == "done"
    # the checkpoint lies on the shared trunk: every run of that family has started
    family = p.grid.runs[partial].family
    assert {status[r.run_id] for r in p.grid.families[family]} == {"partial"}
    assert status[diverged] == "diverged"
    assert sum(s == "to do" for s in status.values()) == 60 - 1 - 5 - 1
    # GPU-hours: planned from seconds_per_iter, spent and wasted from the ledger
    row = df.set_index("run_id").loc[done]
    assert abs(row["gpu_hours"] - 180_000 * 0.338 * 8 / 3600) < 0.01
    assert abs(row["gpu_hours_spent"] - 2 * 8.0) < 1e-3
    assert abs(row["gpu_hours_wasted"] - 1_000 * 0.5 / 1000 * 8 / 3600) < 1e-3  # the rows' 0.5 ms/iteration
    assert "ledger: 2 job attempts of 1 jobs: 1 done, 1 pre-empted" in proc.stdout
    assert "ETA:" in proc.stdout and "nothing running now" in proc.stdout
    assert (tmp_path / "results" / "campaign" / "jobs.csv").exists()
    assert (tmp_path / "results" / "campaign" / "timeline.png").exists()
