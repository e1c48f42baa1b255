"""The whole pipeline through the real Snakemake on a shrunk copy of the embedded default:
synthetic data -> pre-training -> training segments (trunk + tails) -> COCO evaluation ->
metrics table -> tables and figures; then the rebuild from cached results."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import ROOT, small_tiny_config, snakemake, write_yaml
from rethink import config, grid, metrics, plan, report_targets
from rethink.paths import Paths


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny")
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


def test_tables_and_figures_exist(tiny_run):
    work, *_ = tiny_run
    for target in report_targets.targets("results"):
        f = work / target
        assert f.exists() and f.stat().st_size > 100, target
    table1 = (work / "results" / "tables" / "table1.md").read_text()
    assert "R18" in table1 and "synthetic" in table1


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
    for target in report_targets.targets("results"):
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
    for target in report_targets.targets("results"):
        assert (partial / target).exists(), target
    # nothing trained, nothing evaluated: work/ holds only the identity files and the config
    # snapshot written at parse time, and the figures rule's own log
    assert sorted(d.name for d in (partial / "work").iterdir()) == ["identity", "logs", "specs"]
    assert [str(f.relative_to(partial / "work")) for f in (partial / "work" / "logs").rglob("*.log")] == [
        "logs/report/figures.log"]
    assert "report:" in (partial / "work" / "logs" / "report" / "figures.log").read_text()


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
    for target in report_targets.targets("results"):
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
