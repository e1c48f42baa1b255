"""The rehearsal (rethink.rehearsal, engines/rehearsal_engine.py): the tiny grid through the real
Snakemake with its arithmetic simulated; its outputs, identities and labels apart from a real tree
beside it; the loop's SIGTERM / resume and divergence paths with the rehearsal engine; the paper
grid planned in full with the switch."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import PY, ROOT, load_yaml, small_tiny_config, snakemake, write_yaml
from rethink import checkpoint, collect, config, grid, jobs, metrics, rehearsal, report_targets, segment
from rethink.identity_files import IdentityFiles
from rethink.job_specs import JobSpecs
from rethink.paths import Paths
from rethink.plan import Plan


def tiny_config() -> dict:
    cfg = load_yaml(ROOT / "configs" / "tiny.yaml")
    cfg["workdir"], cfg["results"] = "work", "results"
    return cfg


def run_tree(tree: Path, cfg: dict, *args, check=True):
    write_yaml(tree / "cfg.yaml", cfg)
    return snakemake(["--configfile", str(tree / "cfg.yaml"), "--cores", "2", *args], cwd=tree, check=check)


def planned_jobs(proc) -> dict[str, int]:
    """Jobs per rule of a dry run (Snakemake's job stats); {} when nothing is to be done."""
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def files(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under root -> (mtime ns, sha256)."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def rehearsed(module_tmp) -> Path:
    """configs/tiny.yaml's whole grid (54 jobs) rehearsed: `--config rehearsal=true`."""
    tree = module_tmp("rehearsal_tiny")
    proc = run_tree(tree, tiny_config(), "--config", "rehearsal=true", check=False)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-1500:]}" for p in sorted((tree / "work").rglob("*.log")))
        pytest.fail(f"tiny rehearsal failed:\n{proc.stderr[-5000:]}\n{logs[-6000:]}")
    return tree


def test_the_tiny_grid_rehearses_every_job_into_its_own_folders(rehearsed):
    tree = rehearsed
    out = (tree / ".snakemake" / "log").glob("*.log")
    assert any("54 of 54 steps (100%) done" in p.read_text() for p in out)
    # nothing outside <workdir>/rehearsal and <results>/rehearsal
    assert sorted(p.name for p in (tree / "work").iterdir()) == ["rehearsal"]
    assert sorted(p.name for p in (tree / "results").iterdir()) == ["rehearsal"]
    snap = next((tree / "work" / "rehearsal" / "specs").glob("config-*.json"))
    cfg, _ = jobs.read_snapshot(str(snap))
    assert cfg["rehearsal"]["compression"] == rehearsal.DEFAULTS["compression"]
    assert (cfg["workdir"], cfg["results"]) == ("work/rehearsal", "results/rehearsal")
    # every checkpoint the loop wrote names the rehearsal engine (JSON: it holds no tensor)
    final = next((tree / "work" / "rehearsal" / "models").rglob("model_final.pth"))
    model = checkpoint.load(final)
    assert model["engine"] == "rehearsal" and list(model["model"]) == ["w"] and final.read_bytes()[:1] == b"{"


def test_every_metrics_json_says_rehearsal_with_simulated_finite_stats(rehearsed):
    found = sorted((rehearsed / "results" / "rehearsal" / "metrics").rglob("iter_*.json"))
    assert len(found) == 24
    for f in found:
        rec = metrics.read(f)
        assert rec["rehearsal"] is True and rec["compression"] == 3600.0 and rec["engine"] == "rehearsal", f
        assert rec["identity"] and set(rec["stats"]) == {"bbox", "segm"}
        assert all(math.isfinite(v) and 0 < v <= 100 for s in rec["stats"].values() for v in s.values()), f
    table = collect.read_csv(rehearsed / "results" / "rehearsal" / "metrics.csv")
    assert table.rehearsal.all() and len(table) > 0


def test_every_job_log_prints_the_compression(rehearsed):
    root = rehearsed / "work" / "rehearsal" / "logs"
    job_logs = [p for p in sorted(root.rglob("*.log")) if p.relative_to(root).parts[0] != "report"]
    assert len(job_logs) >= 51  # 24 training, 24 evaluations, 2 data, 1 pre-training
    for p in job_logs:
        assert "REHEARSAL (simulated, not measured): compression 3600" in p.read_text(), p


def test_every_table_claims_row_figure_and_report_category_says_rehearsal(rehearsed):
    tables = rehearsed / "results" / "rehearsal" / "tables"
    for name in ("table1", "table2", "table3", "keypoints", "less_data", "voc"):
        assert (tables / f"{name}.md").read_text().startswith(f"# {rehearsal.LABEL}"), name
        assert "REHEARSAL" in (tables / f"{name}.tex").read_text().split(r"\midrule")[0], name
        csv = (tables / f"{name}.csv").read_text().splitlines()
        assert csv[0].endswith(",rehearsal") and all(line.endswith(",True") for line in csv[1:]), name
    claims = (tables / "claims.csv").read_text()
    rows = [r for r in claims.splitlines()[1:] if r.strip()]
    assert rows and all("REHEARSAL (simulated)" in r for r in rows)
    assert (tables / "claims.md").read_text().startswith("# REHEARSAL")
    # the figures: REHEARSAL in the title and across the figure, our curves labelled simulated
    from rethink import figures, published

    df = collect.read_csv(rehearsed / "results" / "rehearsal" / "metrics.csv")
    fig, _ = figures.convergence(df[~df.test_aug], published.load(), {"main"}, "Convergence")
    figures._rehearsal_save(fig, rehearsed / "figs", "convergence")
    assert fig.get_suptitle().startswith(rehearsal.LABEL)
    assert any(t.get_text() == "REHEARSAL" for t in fig.texts)
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "random init (simulated)" in labels and "paper" in labels
    assert (rehearsed / "results" / "rehearsal" / "figures" / "convergence.png").stat().st_size > 0
    # snakemake --report's categories
    cfg = config.validate(tiny_config() | {"rehearsal": True})
    entries = report_targets.report_entries(Paths(cfg, Plan(grid.build(cfg))))
    assert all(e["category"].startswith("REHEARSAL ") for e in entries)


def test_simulated_ap_is_the_documented_function_of_the_papers_numbers():
    rows = rehearsal._published()
    run = {
        "backbone": "R50",
        "norm": "GN",
        "data": "coco_full",
        "schedule": "6x",
        "iterations": 540000,
        "recipe": {"task": "mask_rcnn", "iters_per_x": 90000},
    }
    rand, pre = {**run, "init": "random", "init_kind": "random"}, {**run, "init": "imagenet", "init_kind": "staged"}
    end = rehearsal.simulated_stats(rand, 540000, False, ["bbox", "segm"], rows)
    assert end["bbox"]["AP"] == pytest.approx(41.3)  # Table 1, R50 GN random 6x
    assert end["bbox"]["AP50"] == pytest.approx(41.3 * rehearsal.RATIO["AP50"])
    early_r = rehearsal.simulated_stats(rand, 90000, True, ["bbox"], rows)["bbox"]["AP"]
    early_p = rehearsal.simulated_stats(pre, 90000, True, ["bbox"], rows)["bbox"]["AP"]
    assert early_p > early_r + 3 and early_r < 0.85 * 41.3  # pre-training converges faster early on
    fallback = rehearsal.simulated_stats({**rand, "backbone": "R18"}, 540000, False, ["bbox"], rows)
    assert fallback["bbox"]["AP"] == pytest.approx(rehearsal.FALLBACK["bbox"])


def test_stride_never_crosses_a_checkpoint_or_sleeps_too_long():
    assert rehearsal.stride(0, 20000, 5000, 0.338, 3600) == 5000
    assert rehearsal.stride(480000, 500000, 5000, 0.338, 3600) == 5000
    assert rehearsal.stride(0, 20000, 5000, 0.338, 100) == 500  # 500 x 0.338 / 100 = 1.7 s <= 2 s
    assert rehearsal.stride(6, 8, 2, 0.27, 3600) == 2 and rehearsal.stride(0, 7, 5000, 1.0, 3600) == 1


def rehearsal_specs(tmp_path: Path, compression: float, **extra) -> JobSpecs:
    """The job specs of a shrunk tiny rehearsal (its first trunk segment 0 -> 8, checkpoints every
    2), with its (simulated) dataset written."""
    cfg = small_tiny_config()
    cfg["eval_period"] = cfg["max_segment_iters"] = 12
    cfg["workdir"], cfg["results"] = str(tmp_path / "work"), str(tmp_path / "results")
    cfg["rehearsal"] = {"compression": compression, **extra}
    cfg = config.validate(cfg)
    P = JobSpecs(Paths(cfg, Plan(grid.build(cfg))))
    rehearsal.prepare_data(P.data_spec("synthetic"))
    return P


def rehearsal_segment_spec(tmp_path: Path, compression: float, **extra) -> dict:
    """The spec of the first trunk segment of rehearsal_specs."""
    P = rehearsal_specs(tmp_path, compression, **extra)
    return P.train_spec(P.plan.segment("R18-GN-random-synthetic-s0", "trunk", 8))


def test_sigterm_mid_segment_resumes_like_a_straight_run(tmp_path):
    """SIGTERM during a rehearsal segment: the loop writes a resume checkpoint and exits 143; the
    same job again resumes there and ends where a run that never stopped ends."""
    spec = rehearsal_segment_spec(tmp_path / "a", 0.27)  # 1 s per simulated iteration, steps of 2
    assert spec["engine"] == "rehearsal" and spec["run"]["rehearsal"]["stride"] == 2
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    cmd = [PY, str(ROOT / "workflow_scripts" / "train.py"), "--spec", str(spec_file)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "iter 2/8" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(seen) + rest
    assert "stopped by SIGTERM after iteration 4 of 8" in rest
    assert (Path(spec["resume_dir"]) / "iter_0000004.pth").exists() and not Path(spec["output"]).exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming from" in again.stdout and "at iteration 4" in again.stdout
    straight = rehearsal_segment_spec(tmp_path / "b", 1e9)
    segment.train_segment(straight)
    a, b = (checkpoint.load(s["output"]) for s in (spec, straight))
    assert a["model"]["w"] == b["model"]["w"] and a["optimizer"] == b["optimizer"] and a["counters"] == b["counters"]
    assert a["iteration"] == 8 and a["engine"] == "rehearsal"


def test_config_rehearsal_diverge_stops_the_run_through_the_loops_guard(tmp_path):
    """The loop's guard stops it; the segment ends with its output marked diverged (rethink.segment),
    in the job's ledger row too."""
    from rethink import ledger

    spec = rehearsal_segment_spec(tmp_path, 1e9, diverge={"R18-GN-random-synthetic-s0": 5})
    with ledger.recording(str(tmp_path / "results"), rule="train_segment", job="train_segment/x") as row:
        summary = segment.train_segment(spec)
    assert summary["diverged"]["iteration"] == 4 and summary["diverged"]["loss"] == "nan"
    assert (Path(spec["resume_dir"]) / "DIVERGED.json").exists()
    assert checkpoint.load(spec["output"])["diverged"]["iteration"] == 4
    assert json.loads(row.path.read_text())["outcome"] == "diverged"


def test_a_real_engine_never_takes_rehearsal_weights_and_collect_never_mixes(tmp_path, rehearsed):
    from rethink.weights import read_backbone_weights

    weights = next((rehearsed / "work" / "rehearsal" / "init").rglob("*.pth"))
    with pytest.raises(ValueError, match="not rehearsal weights"):
        rehearsal.read_weights(str(ROOT / "config.yaml"))
    assert rehearsal.read_weights(str(weights))["rehearsal"] is True
    with pytest.raises(checkpoint.CheckpointError, match="unreadable backbone weights"):  # what the real engines read
        read_backbone_weights(weights, {"backbone": "R18", "norm": "GN"})
    # a rehearsal metrics JSON where a real campaign expects its own: collect names it
    real = collect.planned_runs(tiny_config())
    src = next((rehearsed / "results" / "rehearsal" / "metrics").rglob("iter_*.json"))
    with pytest.raises(collect.CollectError, match="a rehearsal metrics file, but the config is a real campaign"):
        collect.collect(tmp_path, real, [src])


def test_real_identities_stay_and_rehearsal_ones_differ():
    real = config.validate(tiny_config())
    fake = config.validate(tiny_config() | {"rehearsal": {"compression": 10}})
    real_ids, fake_ids = (IdentityFiles(Paths(c, Plan(grid.build(c)))) for c in (real, fake))
    for family, line in real_ids.plan.lines:
        (path_r, h_r), (path_f, h_f) = real_ids.line_identity(family, line), fake_ids.line_identity(family, line)
        assert h_r != h_f and path_f.startswith("work/rehearsal/identity/")
        assert "rehearsal" not in real_ids.store.current[path_r][1]
    assert fake_ids.store.current[path_f][1]["rehearsal"] == {"rehearsal": True, "compression": 10.0}
    # rehearsal.slow: the family trains slower than its estimate, asks for the same walltime, same identity
    slow = config.validate(tiny_config() | {"rehearsal": {"compression": 10, "slow": {family: 4}}})
    slow_specs = JobSpecs(Paths(slow, Plan(grid.build(slow))))
    run = next(r for r in slow_specs.plan.grid.runs.values() if r.family == family)
    seg = slow_specs.plan.final_segment(run.run_id)
    assert slow_specs.train_spec(seg)["run"]["rehearsal"]["slow"] == 4.0
    assert slow_specs.identities.line_identity(family, seg.line)[1] == fake_ids.line_identity(family, seg.line)[1]
    from rethink.resources import JobResources

    slow_min = JobResources(slow, slow_specs.plan).train_runtime_min(seg, 1)
    assert slow_min == JobResources(fake, fake_ids.plan).train_runtime_min(seg, 1)


def test_a_rehearsal_jobs_ledger_row_counts_the_gpus_it_simulates():
    """A rehearsal trains on the CPU (its spec's recipe asks for 0 GPUs, whatever `request` says), so
    its ledger row (rethink.cli) names the GPUs of the job it simulates: the campaign's simulated
    GPU-hours (rethink.scorecard) count 8 per R50 segment, as the plan does, not one device."""
    from rethink import cli

    cfg = config.validate(load_yaml(ROOT / "config.yaml") | {"rehearsal": {"request": "cpu"}})
    specs = JobSpecs(Paths(cfg, Plan(grid.build(cfg))))
    run = next(r for r in specs.plan.grid.runs.values() if r.backbone == "R50")
    seg = specs.plan.final_segment(run.run_id)
    spec = specs.train_spec(seg)
    assert spec["run"]["recipe"]["gpus"] == 0 and run.recipe["gpus"] == 8
    assert cli._row_fields(specs, "train_segment/x", spec)["gpus"] == 8
    ms = next(m for m in specs.plan.milestones.values() if m.family == seg.family)
    assert cli._row_fields(specs, "evaluate/x", specs.eval_spec(ms))["gpus"] == run.recipe["eval_gpus"]


def test_paper_grid_with_the_switch_plans_all_1470_jobs_with_compressed_walltimes(tmp_path):
    proc = snakemake(
        ["--configfile", str(ROOT / "config.yaml"), "--config", "rehearsal=true", "-n"], cwd=tmp_path, check=True
    )
    jobs_ = planned_jobs(proc)
    assert jobs_["total"] == 1470 and jobs_["train_segment"] + jobs_["train_final"] == 726
    res = re.findall(r"rule train_segment:.*?resources: ([^\n]*)", proc.stdout, re.S)
    assert res and all("gpu=8" in r and "runtime=3," in r and "--signal=TERM@60" in r for r in res)
    cpu = snakemake(
        ["--configfile", str(ROOT / "config.yaml"), "--config", 'rehearsal={"request": "cpu"}', "-n"],
        cwd=tmp_path,
        check=True,
    )
    res = re.findall(r"rule (?:train_segment|evaluate):.*?resources: ([^\n]*)", cpu.stdout, re.S)
    assert res and all("gpu=0," in r for r in res) and planned_jobs(cpu)["total"] == 1470


def test_a_rehearsal_beside_a_finished_real_tree_neither_reads_nor_touches_it(module_tmp):
    """Both ways: the rehearsal plans every job afresh, every path its jobs are given lies in its
    own folders and no real file changes; then the real workflow has nothing to do and changes no
    rehearsal file."""
    tree = module_tmp("rehearsal_beside_real")
    cfg = small_tiny_config()
    run_tree(tree, cfg)
    real = {k: files(tree / k) for k in ("work", "results")}
    real_plan = planned_jobs(run_tree(tree, cfg, "-n", "--forceall"))
    dry = run_tree(tree, cfg, "--config", "rehearsal=true", "-n")
    assert planned_jobs(dry) == real_plan  # nothing taken from the real tree
    inputs = [p for line in re.findall(r"^\s+input: (.*)$", dry.stdout, re.M) for p in line.split(", ")]
    assert inputs and all(
        p.startswith(("work/rehearsal/", "results/rehearsal/")) or p.endswith("published.csv") for p in inputs
    ), inputs
    run_tree(tree, cfg, "--config", "rehearsal=true")
    P = jobs.load(str(next((tree / "work" / "rehearsal" / "specs").glob("*.json"))))
    keys = [f"train_segment/{s.family}/{s.line}/{s.end}" for s in P.plan.segments.values()]
    keys += [f"evaluate/{m.family}/{m.line}/{m.iteration}" for m in P.plan.milestones.values()]
    for key in keys:
        spec = jobs.spec(P, key)
        paths = [
            spec.get(k)
            for k in ("dataset", "output", "resume_dir", "checkpoint", "start_checkpoint", "init_weights", "init_cost")
        ] + [spec["live"]["dir"]]
        assert all(p.startswith(("work/rehearsal/", "results/rehearsal/")) for p in paths if p), (key, paths)
    for k in ("work", "results"):
        now = {p: v for p, v in files(tree / k).items() if not p.startswith("rehearsal/")}
        assert now == real[k], k
    rehearsed = {k: files(tree / k / "rehearsal") for k in ("work", "results")}
    assert any(p.endswith(".json") for p in rehearsed["results"])
    assert planned_jobs(run_tree(tree, cfg, "-n")) == {}
    run_tree(tree, cfg)
    assert {k: files(tree / k / "rehearsal") for k in ("work", "results")} == rehearsed
    real_metrics = [p.relative_to(tree).parts for p in collect.metrics_files(tree / "results")]
    assert real_metrics and not any("rehearsal" in parts for parts in real_metrics)  # `snakemake figures` globs these
    assert os.path.exists(tree / "results" / "metrics.csv")


def test_a_rehearsal_job_imports_no_torch_nor_detection_library(tmp_path):
    """A cold rehearsal job pays Python's and numpy's start-up only: no torch (2 s of every job's
    start on 2 cores, 32 of them at once in bench_campaign), torchvision, pycocotools, detectron2
    nor matplotlib. Its checkpoint is JSON, read back by rethink.checkpoint; the evaluation of that
    checkpoint, its metrics JSON and the live curves (TensorBoard files) need none of them either."""
    P = rehearsal_specs(tmp_path, 1e9)
    seg = P.plan.segment("R18-GN-random-synthetic-s0", "trunk", 8)
    spec = P.train_spec(seg)
    ms = next(m for m in P.plan.milestones.values() if (m.family, m.line, m.iteration) == (seg.family, seg.line, 8))
    specs = {"train": spec, "evaluate": P.eval_spec(ms)}
    for name, job_spec in specs.items():
        spec_file = tmp_path / f"{name}.json"
        spec_file.write_text(json.dumps(job_spec))
        script = ROOT / "workflow_scripts" / f"{name}.py"
        code = (
            f"import runpy, sys\nsys.argv = [{str(script)!r}, '--spec', {str(spec_file)!r}]\n"
            f"try:\n    runpy.run_path({str(script)!r}, run_name='__main__')\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print('HEAVY', sorted(m for m in ('torch', 'torchvision', 'pycocotools', 'detectron2', 'matplotlib') "
            "if m in sys.modules))\n"
        )
        proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "HEAVY []" in proc.stdout, (name, proc.stdout)
    assert Path(spec["output"]).read_bytes()[:1] == b"{" and checkpoint.load(spec["output"])["iteration"] == 8
    record = metrics.read(specs["evaluate"]["output"])
    assert record["rehearsal"] is True and record["iteration"] == 8
    assert any(Path(specs["evaluate"]["live"]["dir"]).rglob("events.out.tfevents.*"))
