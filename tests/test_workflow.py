"""The whole pipeline through the real Snakemake on a shrunk copy of the embedded default:
synthetic data -> pre-training -> training segments (trunk + tails) -> COCO evaluation ->
metrics table -> tables and figures; then the rebuild from cached results."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ROOT, small_tiny_config, snakemake, write_yaml
from rethink import config, grid, metrics, plan, report_targets
from rethink.job_specs import JobSpecs
from rethink.paths import Paths


@pytest.fixture(scope="module")
def tiny_run(module_tmp):
    work = module_tmp("tiny")
    cfg = small_tiny_config()
    cfg_file = write_yaml(work / "tiny.yaml", cfg)
    proc = snakemake(["--cores", "2", "--configfile", str(cfg_file)], cwd=work, timeout=900)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "work" / "logs").rglob("*.log")))
        pytest.fail(f"tiny pipeline failed:\n{proc.stderr[-5000:]}\n{logs[-8000:]}")
    validated = config.validate(cfg, str(cfg_file))
    p = plan.Plan(grid.build(validated, str(cfg_file)))
    return work, cfg_file, p, Paths(validated, p)


def test_every_milestone_has_valid_metrics(tiny_run):
    work, _, p, paths = tiny_run
    assert len(p.grid.runs) == 4 and len(p.grid.families) == 2
    for ms in p.milestones.values():
        rec = metrics.read(work / paths.metrics(ms.family, ms.line, ms.iteration))
        assert rec["iteration"] == ms.iteration
        assert set(rec["stats"]) == {"bbox", "segm"}
        assert rec["samples_seen"]["images"] == ms.iteration * p.grid.runs[ms.runs[0]].recipe["batch"]
        assert rec["samples_seen"]["instances"] >= rec["samples_seen"]["images"]
        assert all(0.0 <= v <= 100.0 for v in rec["stats"]["bbox"].values() if v == v)
        if rec["init"] == "imagenet":
            assert rec["pretrain_samples"]["images"] == 12 * 8


def test_metrics_table_has_every_run_and_its_final_point(tiny_run):
    work, _, p, _ = tiny_run
    df = pd.read_csv(work / "results" / "metrics.csv")
    assert set(df.run_id) == set(p.grid.runs)
    finals = df[df.final.astype(str).str.lower() == "true"]
    assert sorted(finals.run_id) == sorted(p.grid.runs)
    for run_id, run in p.grid.runs.items():
        assert finals.set_index("run_id").loc[run_id, "iteration"] == run.iterations
    # a trunk milestone is one evaluation shared by the runs that pass through it
    trunk = df[df.line == "trunk"]
    assert (trunk.groupby(["family", "iteration"]).bbox_AP.nunique(dropna=False) == 1).all()


def test_live_curves_hold_every_run_in_metrics_json_and_tensorboard(tiny_run):
    """Each run's folder under <workdir>/tb holds its whole curve across segments (the shared trunk
    included): training lines up to its last iteration and every evaluation of its curve, in
    detectron2's metrics.json format and in TensorBoard event files read with TensorBoard's reader."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    work, _, p, paths = tiny_run
    assert sorted(d.name for d in (work / "work" / "tb").iterdir()) == sorted(p.grid.runs)
    for run_id, run in p.grid.runs.items():
        folder = work / "work" / "tb" / run_id
        lines = [json.loads(x) for x in (folder / "metrics.json").read_text().splitlines()]
        train = {x["iteration"]: x for x in lines if "total_loss" in x}
        evals = {x["iteration"]: x for x in lines if "bbox/AP" in x}
        ends = sorted(s.end for s in p.segments_of_run(run_id))
        assert set(ends) <= set(train) and max(train) == run.iterations, (run_id, sorted(train), ends)
        assert all({"lr", "loss_classifier", "loss_mask", "time"} <= set(x) for x in train.values())
        milestones = p.milestones_of_run(run_id)
        assert sorted(evals) == [m.iteration for m in milestones]
        for m in milestones:
            rec = metrics.read(work / paths.metrics(m.family, m.line, m.iteration))
            assert evals[m.iteration]["segm/AP75"] == pytest.approx(rec["stats"]["segm"]["AP75"], nan_ok=True)
        ea = EventAccumulator(str(folder))
        ea.Reload()
        assert {"lr", "total_loss", "bbox/AP", "segm/AP"} <= set(ea.Tags()["scalars"])
        # TensorBoard orders by step; jobs write in the order they run (evaluations in any order)
        assert sorted(e.step for e in ea.Scalars("bbox/AP")) == sorted(evals)
        loss = {e.step: e.value for e in ea.Scalars("total_loss")}
        assert sorted(loss) == sorted(train)
        assert all(loss[i] == pytest.approx(train[i]["total_loss"], rel=1e-6) for i in train)


def test_tables_and_figures_exist(tiny_run):
    work, _, p, _ = tiny_run
    # a grid without COCO-subset or VOC runs gets no less-data figure (never a placeholder)
    assert report_targets.figure_names(p) == ["convergence", "samples_seen"]
    assert not (work / "results" / "figures" / "less_data.png").exists()
    for target in report_targets.targets("results", report_targets.figure_names(p)):
        f = work / target
        assert f.exists() and f.stat().st_size > 100, target
    table1 = (work / "results" / "tables" / "table1.md").read_text()
    assert "R18" in table1 and "synthetic" in table1
    # the claims check at tiny scale: the tiny runs decide (a), (b), (e1); the rest lack COCO runs
    claims = pd.read_csv(work / "results" / "tables" / "claims.csv", keep_default_na=False).set_index("claim")
    assert list(claims.index) == ["a", "b", "c", "d", "e1", "e2", "f"]
    for c in ("a", "b", "e1"):
        assert (
            claims.loc[c, "verdict"] in ("reproduced", "not reproduced")
            and "R18 GN synthetic" in claims.loc[c, "numbers"]
        )
    for c in ("c", "d", "e2", "f"):
        assert claims.loc[c, "verdict"] == "not enough runs" and claims.loc[c, "missing"]


def test_checkpoints_are_temporary_and_resume_state_is_cleaned(tiny_run):
    work, *_ = tiny_run
    assert not list((work / "work" / "checkpoints").rglob("*.pth"))
    assert not list((work / "work" / "resume").rglob("*.pth")) if (work / "work" / "resume").exists() else True


def test_rebuild_from_cached_metrics_schedules_no_training(tiny_run, tmp_path):
    work, cfg_file, p, _ = tiny_run
    # a laptop: only the metrics JSONs (and the init cost records) of results/ were copied
    laptop = tmp_path / "laptop"
    shutil.copytree(work / "results" / "metrics", laptop / "results" / "metrics")
    shutil.copytree(work / "results" / "init", laptop / "results" / "init")
    shutil.copy(cfg_file, laptop / "tiny.yaml")
    dry = snakemake(["-n", "--configfile", "tiny.yaml"], cwd=laptop, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    stats = _job_stats(dry.stdout)
    assert set(stats) == {"collect", "report", "all"}, dry.stdout[-3000:]
    real = snakemake(["--cores", "1", "--configfile", "tiny.yaml"], cwd=laptop, timeout=300)
    assert real.returncode == 0, real.stderr[-3000:]
    assert not (laptop / "work" / "checkpoints").exists()
    for target in report_targets.targets("results", report_targets.figure_names(tiny_run[2])):
        assert (laptop / target).exists(), target
    same = pd.read_csv(laptop / "results" / "metrics.csv").drop(columns=["source"])
    orig = pd.read_csv(work / "results" / "metrics.csv").drop(columns=["source"])
    pd.testing.assert_frame_equal(same, orig)


def test_figures_target_builds_a_partial_grid(tiny_run, tmp_path):
    work, cfg_file, p, paths = tiny_run
    partial = tmp_path / "partial"
    shutil.copytree(work / "results" / "metrics", partial / "results" / "metrics")
    shutil.copytree(work / "results" / "init", partial / "results" / "init")
    # the 3x runs have not finished: drop their tails' metrics
    for f in (partial / "results" / "metrics").rglob("*.json"):
        if f.parent.name == "3x":
            f.unlink()
    proc = snakemake(["figures", "--configfile", str(cfg_file)], cwd=partial, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    df = pd.read_csv(partial / "results" / "metrics.csv")
    finals = df[df.final.astype(str).str.lower() == "true"]
    assert set(finals.run_id) == {r for r in p.grid.runs if "-2x-" in r}
    for target in report_targets.targets("results", report_targets.figure_names(tiny_run[2])):
        assert (partial / target).exists(), target
    # nothing trained, nothing evaluated: work/ holds only the identity files and the config
    # snapshot written at parse time, and the figures rule's own log
    assert sorted(d.name for d in (partial / "work").iterdir()) == ["identity", "logs", "specs"]
    assert [str(f.relative_to(partial / "work")) for f in (partial / "work" / "logs").rglob("*.log")] == [
        "logs/report/figures.log"
    ]
    assert "report:" in (partial / "work" / "logs" / "report" / "figures.log").read_text()


def test_every_job_has_one_closed_ledger_row(tiny_run):
    """The ledger (rethink.ledger): one closed row per job of the run, jobs.csv and the timeline
    written when the workflow ended, GPU-hours that add up, and the cost table in tables/."""
    work, _, p, paths = tiny_run
    jobs = pd.read_csv(work / "results" / "campaign" / "jobs.csv")
    assert (work / "results" / "campaign" / "timeline.png").stat().st_size > 10_000
    assert jobs["job"].is_unique and set(jobs["outcome"]) == {"done"}, jobs[["job", "outcome"]]
    assert jobs["end"].notna().all() and (jobs["attempt"] == 1).all()
    rules = jobs["rule"].value_counts()
    assert rules["train_segment"] + rules["train_final"] == len(p.segments)
    assert rules["train_final"] == len(p.grid.runs) and rules["evaluate"] == len(p.milestones)
    assert {"prepare_data", "prepare_pretrain_data", "pretrain", "collect", "report"} <= set(rules.index)
    train = jobs[jobs["rule"].isin(["train_segment", "train_final"])]
    # every segment trained its iterations once, from its start, each charged to a run of the grid
    assert ((train["resumed_from"] == train["from_iter"]) & (train["iter_reached"] == train["to_iter"])).all()
    assert set(train["run"]) == set(p.grid.runs) and (train["first_iter_s"] >= 0).all()
    assert (train["seconds_per_iter"] > 0).all() and (jobs["wasted_iters"] == 0).all()
    devices = jobs["rule"].isin(["train_segment", "train_final", "evaluate", "pretrain"]).astype(int)  # CPU: 1
    assert abs(jobs["gpu_hours"].sum() * 3600 - (jobs["wall_s"] * devices).sum()) < 1.0
    cost = pd.read_csv(work / "results" / "tables" / "cost.csv").set_index("experiment")
    assert abs(cost.loc["all jobs", "spent_gpu_h"] - jobs["gpu_hours"].sum()) < 1e-6


def test_measured_speeds_overlay_changes_no_result(tiny_run, tmp_path):
    """`snakemake speeds` writes the measured seconds per iteration and evaluation seconds as an
    overlay; passed with --configfile, it changes walltimes, never a result's identity."""
    work, cfg_file, *_ = tiny_run
    tree = _copy_tree(work, tmp_path / "tree")
    proc = snakemake(["speeds", "--configfile", str(cfg_file)], cwd=tree, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    overlay = tree / "results" / "campaign" / "measured_speeds.yaml"
    data = yaml.safe_load(overlay.read_text())
    (spi,) = data["seconds_per_iter"]
    assert spi["source"].startswith("measured by the ledger") and spi["seconds"] > 0
    assert spi["seconds"] != yaml.safe_load(cfg_file.read_text())["seconds_per_iter"][0]["seconds"]
    (ev,) = data["eval_seconds"]
    assert ev["source"].startswith("measured by the ledger") and ev["setup_seconds"] > 0
    dry = snakemake(["-n", "--configfile", str(cfg_file), str(overlay)], cwd=tree, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]


def _copy_tree(src: Path, dst: Path) -> Path:
    """A copy of a finished tiny tree; its large files (models, weights: replaced, never written
    in place) are hard links, so the copy is cheap and editing a small file leaves `src` alone."""

    def copy(a, b):
        return os.link(a, b) if os.path.getsize(a) > 1 << 20 else shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=copy)
    return dst


def test_a_failing_collect_keeps_the_previous_table_and_names_the_file(tiny_run, tmp_path):
    work, cfg_file, p, paths = tiny_run
    tree = _copy_tree(work, tmp_path / "tree")
    table = (tree / "results" / "metrics.csv").read_bytes()
    ms = next(m for m in p.milestones.values() if m.line == "trunk")
    bad = tree / paths.metrics(ms.family, ms.line, ms.iteration)
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    proc = snakemake(["--cores", "1", "--configfile", str(cfg_file)], cwd=tree, timeout=600)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert _job_stats(proc.stdout + proc.stderr) == {"collect": 1, "report": 1, "all": 1}, proc.stderr[-3000:]
    assert (tree / "results" / "metrics.csv").read_bytes() == table
    log = (tree / paths.log("report", "collect")).read_text()
    assert f"{paths.metrics(ms.family, ms.line, ms.iteration)}: not a text file" in log, log[-2000:]


def test_a_deleted_metrics_file_is_noticed(tiny_run, tmp_path):
    """A final point's metrics file is evaluated again from the kept model; an intermediate one
    would need its (temporary, gone) checkpoint retrained: the real run stops and says so."""
    work, cfg_file, p, paths = tiny_run
    tree = _copy_tree(work, tmp_path / "tree")
    run_id = sorted(p.grid.runs)[0]
    final = p.final_milestone(run_id)
    (tree / paths.metrics(final.family, final.line, final.iteration)).unlink()
    dry = snakemake(["-n", "--configfile", str(cfg_file)], cwd=tree, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "1 metrics file(s) it was built from are gone" in dry.stderr
    assert _job_stats(dry.stdout) == {"evaluate": 1, "collect": 1, "report": 1, "all": 1}, dry.stdout[-3000:]
    real = snakemake(["--cores", "1", "--configfile", str(cfg_file)], cwd=tree, timeout=600)
    assert real.returncode == 0, real.stderr[-3000:]
    assert metrics.read(tree / paths.metrics(final.family, final.line, final.iteration))["iteration"] == final.iteration
    table = (tree / "results" / "metrics.csv").read_bytes()
    ms = next(m for m in p.milestones.values() if m.line == "trunk")
    (tree / paths.metrics(ms.family, ms.line, ms.iteration)).unlink()
    models = {f: f.stat().st_mtime_ns for f in (tree / "work" / "models").rglob("*.pth")}
    dry = snakemake(["-n", "--configfile", str(cfg_file)], cwd=tree, timeout=300)
    proc = snakemake(["--cores", "1", "--configfile", str(cfg_file)], cwd=tree, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "this plan retrains finished work" in out, out[-3000:]
    # the dry run's prediction (from the files on disk) counts what the real run's guard counts in
    # Snakemake's DAG: the gone checkpoint's segments and every one downstream of them
    count = r"retrains finished work: (\d+) training segment\(s\) of (\d+) line"
    predicted, guarded = re.findall(count, dry.stderr), re.findall(count, out)
    assert predicted and guarded and predicted[0] == guarded[-1], (predicted, guarded)
    assert "metrics file(s) of finished evaluations are gone" in out and "Nothing was run or deleted" in out
    assert 'File "' not in out, out[-3000:]  # the guard stops with its message alone
    assert (tree / "results" / "metrics.csv").read_bytes() == table
    assert {f: f.stat().st_mtime_ns for f in (tree / "work" / "models").rglob("*.pth")} == models


def _job_stats(stdout: str) -> dict:
    stats, on = {}, False
    for line in stdout.splitlines():
        if line.startswith("job ") and "count" in line:
            on = True
            continue
        if on:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if parts[0].startswith("-"):
                continue
            stats[parts[0]] = int(parts[1])
    return stats


def test_report_embeds_every_table_and_figure(tiny_run):
    work, cfg_file, *_ = tiny_run
    proc = snakemake(["--report", "report.html", "--configfile", str(cfg_file)], cwd=work, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (work / "report.html").read_text(errors="replace")
    for target in report_targets.targets("results", report_targets.figure_names(tiny_run[2])):
        assert Path(target).name in html, target


def test_rulegraph_renders(tmp_path):
    proc = snakemake(["--rulegraph", "--configfile", str(ROOT / "configs" / "tiny.yaml")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for rule in ["prepare_data", "pretrain", "train_segment", "evaluate", "collect", "report", "all"]:
        assert f'label = "{rule}"' in proc.stdout, rule
    if shutil.which("dot") is None:
        pytest.skip("graphviz `dot` is not installed (make test installs it as root): rule graph not rendered")
    svg = subprocess.run(["dot", "-Tsvg"], input=proc.stdout, capture_output=True, text=True, check=True).stdout
    assert "<svg" in svg and "train_segment" in svg


def test_faster_coco_eval_gives_pycocotools_stats_on_a_trained_model(tiny_run, monkeypatch):
    """coco_eval: faster_coco_eval: on a trained tiny model's predictions (score threshold 0, so
    each val image has detections_per_image of them) and shifted ground-truth objects, all 12 bbox
    and 12 segm stats equal pycocotools'."""
    import json
    import math

    import numpy as np
    import torch
    from pycocotools import mask as mask_util

    from rethink import checkpoint, data, evaluate
    from rethink.engines import get_engine

    work, _, p, paths = tiny_run
    run_id = sorted(p.grid.runs)[0]
    spec = JobSpecs(paths).eval_spec(p.final_milestone(run_id))
    monkeypatch.chdir(work)  # the spec's paths are relative to the workflow's folder
    manifest = data.load_manifest(spec["dataset"])
    engine = get_engine("torchvision")
    model = engine.build_model(spec["run"], torch.device("cpu"), distributed=False, dataset=manifest)
    checkpoint.load_model_weights(model, paths.model(run_id))
    model.roi_heads.score_thresh = 0.0
    model.eval()
    with torch.no_grad():
        results = engine.predict(model, spec["run"], manifest, torch.device("cpu"))
    assert len(results) == manifest["num_val_images"] * spec["run"]["recipe"]["detections_per_image"]
    # this small model finds little yet: add the ground truth's objects as detections of varied
    # quality (shifted by up to 30% of their size, random scores), so that AP lies between 0 and 100
    rng = np.random.default_rng(0)
    gt = json.loads(Path(manifest["val"]["annotations"]).read_text())
    size = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        dx, dy = rng.uniform(-0.3, 0.3) * w, rng.uniform(-0.3, 0.3) * h
        polys = [[v + (dx if i % 2 == 0 else dy) for i, v in enumerate(poly)] for poly in a["segmentation"]]
        rle = mask_util.merge(mask_util.frPyObjects(polys, *size[a["image_id"]]))
        rle["counts"] = rle["counts"].decode()  # as the engines write them
        results.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "score": float(rng.uniform()),
                "bbox": [x + dx, y + dy, w, h],
                "segmentation": rle,
            }
        )
    stats = {
        b: evaluate.evaluate_results(manifest, results, "mask_rcnn", log=io.StringIO(), backend=b)
        for b in ("pycocotools", "faster_coco_eval")
    }
    ours, theirs = stats["pycocotools"], stats["faster_coco_eval"]
    assert set(ours) == set(theirs) == {"bbox", "segm"}
    for iou_type in ours:
        assert len(ours[iou_type]) == 12
        assert 0 < ours[iou_type]["AP"] < 100  # neither perfect nor empty: the comparison means something
        for name, v in ours[iou_type].items():
            w = theirs[iou_type][name]
            assert (math.isnan(v) and math.isnan(w)) or abs(v - w) < 1e-9, (iou_type, name, v, w)
