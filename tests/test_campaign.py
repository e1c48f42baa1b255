"""A campaign survives edits and upgrades (rethink.identity, rethink.campaign), through the real
Snakemake on a finished shrunk tiny tree: operational edits and a changed workflow plan no training
or evaluation; a result edit plans exactly its runs, and a real run of it stops, with the changed
field and the GPU-hours, before anything is deleted, unless confirmed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PY, ROOT, small_tiny_config, write_yaml

RESULT_RULES = (
    "train_segment",
    "train_final",
    "evaluate",
    "evaluate_tta",
    "prepare_data",
    "pretrain",
    "prepare_pretrain_data",
)


def two_experiment_config() -> dict:
    """The shrunk tiny grid as two experiments, one per init, so an edit can touch one of them."""
    cfg = small_tiny_config()
    cfg["experiments"] = {"scratch": {"init": ["random"]}, "pretrained": {"init": ["imagenet"]}}
    return cfg


def run(workflow: Path, tree: Path, cfg: dict, *args, timeout=900) -> subprocess.CompletedProcess:
    cfg_file = write_yaml(tree / "campaign.yaml", cfg)
    cmd = [
        "timeout",
        "-k",
        "10",
        str(timeout),
        PY,
        "-m",
        "snakemake",
        "--snakefile",
        str(workflow / "Snakefile"),
        "--directory",
        str(tree),
        "--cores",
        "2",
        "--configfile",
        str(cfg_file),
        *args,
    ]
    return subprocess.run(cmd, cwd=tree, capture_output=True, text=True)


def planned(proc) -> dict[str, int]:
    """Jobs per rule of a dry run (Snakemake's job stats table); {} when nothing is to be done."""
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M) if m[1] != "total"}


def result_jobs(jobs: dict[str, int]) -> dict[str, int]:
    return {r: n for r, n in jobs.items() if r in RESULT_RULES}


def snapshot(tree: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(tree)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted((tree / "results" / "metrics").rglob("*.json"))
    }


@pytest.fixture(scope="module")
def campaign(module_tmp):
    """A private copy of the workflow (so a test may edit its code) and a finished tree."""
    base = module_tmp("campaign")
    workflow = base / "workflow"
    workflow.mkdir()
    for name in ("Snakefile", "rules", "workflow_scripts", "schemas", "profiles", "envs", "report", "config.yaml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, workflow / name)
    shutil.copytree(ROOT / "results" / "paper", workflow / "results" / "paper")
    tree = base / "tree"
    tree.mkdir()
    proc = run(workflow, tree, two_experiment_config())
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((tree / "work" / "logs").rglob("*.log")))
        pytest.fail(f"tiny campaign failed:\n{proc.stderr[-5000:]}\n{logs[-6000:]}")
    return workflow, tree


def test_every_run_keeps_its_final_model(campaign):
    """work/models/<run>/model_final.pth: the last segment's checkpoint (model, optimizer, iteration:
    detectron2's checkpoint layout), evaluated by the final milestone, untouched by temp clean-up."""
    from rethink import checkpoint

    workflow, tree = campaign
    models = sorted((tree / "work" / "models").glob("*/model_final.pth"))
    assert [m.parent.name for m in models] == sorted(
        f"R18-GN-{i}-synthetic-{s}-s0" for i in ("imagenet", "random") for s in ("2x", "3x")
    )
    for m in models:
        state = checkpoint.load(m)
        assert {"model", "optimizer", "iteration"} <= set(state) and state["run_id"] == m.parent.name
        assert state["iteration"] == {"2x": 12, "3x": 18}[m.parent.name.split("-")[4]]
        ident = json.loads(
            (tree / "work" / "identity" / "lines" / state["family"] / f"{state['line']}.json").read_text()
        )
        assert state["identity"] == ident["hash"]
        log = (
            tree / "work" / "logs" / "evaluate" / state["family"] / state["line"] / f"iter_{state['iteration']:07d}.log"
        ).read_text()
        assert "model_final.pth" in (tree / "work" / "logs" / "train" / m.parent.name / "model_final.log").read_text()
        assert "AP" in log
    assert not list((tree / "work" / "checkpoints").rglob("*.pth"))  # intermediate ones are temporary
    proc = run(workflow, tree, two_experiment_config(), "--delete-temp-output")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted((tree / "work" / "models").glob("*/model_final.pth")) == models


def test_test_aug_added_later_evaluates_the_kept_model(campaign, tmp_path):
    workflow, tree = campaign
    copy_ = tmp_path / "tree"
    shutil.copytree(tree, copy_)
    cfg = two_experiment_config()
    cfg["experiments"]["pretrained"]["test_aug"] = True
    before = snapshot(copy_)
    dry = run(workflow, copy_, cfg, "-n")
    assert result_jobs(planned(dry)) == {"evaluate_tta": 2}, planned(dry)
    proc = run(workflow, copy_, cfg)
    assert proc.returncode == 0, proc.stderr[-4000:]
    tta = sorted((copy_ / "results" / "metrics").rglob("*-tta.json"))
    assert len(tta) == 2 and all(json.loads(f.read_text())["test_aug"] for f in tta)
    after = snapshot(copy_)
    assert all(after[k] == v for k, v in before.items())


def test_results_record_their_identity(campaign):
    _, tree = campaign
    files = sorted((tree / "results" / "metrics").rglob("iter_*.json"))
    assert files
    for f in files:
        family, line = f.parent.parent.name, f.parent.name
        ident = json.loads((tree / "work" / "identity" / "lines" / family / f"{line}.json").read_text())
        assert json.loads(f.read_text())["identity"] == ident["hash"], f
        assert "num_workers" not in ident["content"]["run"]["recipe"]
        assert ident["content"]["run"]["recipe"]["base_lr"] == 0.0025


@pytest.mark.parametrize(
    "edit",
    [
        ("recipe", "num_workers", 1),
        ("recipe", "checkpoint_period", 3),
        ("recipe", "eval_gpus", 1),
        ("resources", "cpus_per_gpu", 7),
        ("resources", "min_mem_mb", 5000),
        ("", "runtime_margin", 9),
        ("", "seconds_per_iter", [{"backbone": "R18", "norm": "GN", "gpus": 0, "seconds": 5.0}]),
        ("", "eval_seconds", [{"backbone": "R18", "gpus": 0, "seconds_per_image": 0.5, "setup_seconds": 3}]),
        ("", "warm_interpreter", False),
        ("", "coco_eval", "faster_coco_eval"),
        ("experiments.scratch", "description", "renamed"),
        ("experiments.scratch.recipe", "num_workers", 2),
    ],
)
def test_an_operational_edit_plans_no_result_job(campaign, edit):
    workflow, tree = campaign
    cfg = two_experiment_config()
    where, key, value = edit
    node = cfg
    for part in filter(None, where.split(".")):
        node = node.setdefault(part, {})
    node[key] = value
    before = snapshot(tree)
    assert result_jobs(planned(run(workflow, tree, cfg, "-n"))) == {}
    assert snapshot(tree) == before


def test_a_changed_workflow_plans_no_result_job(campaign, tmp_path):
    """What an upgrade does: other shell text in a rule, other code in a helper and a script."""
    workflow, tree = campaign
    edited = tmp_path / "workflow"
    shutil.copytree(workflow, edited)
    train = edited / "rules" / "train.smk"
    train.write_text(train.read_text().replace('"{params.launcher} ', '"{params.launcher}  '))
    evaluate = edited / "rules" / "evaluate.smk"
    evaluate.write_text(evaluate.read_text().replace("> {log} 2>&1", ">{log} 2>&1"))
    for helper in ("rethink/loop.py", "rethink/evaluate.py", "train.py"):
        f = edited / "workflow_scripts" / helper
        f.write_text(f.read_text() + "\n# a newer version of this file\n")
    assert result_jobs(planned(run(edited, tree, two_experiment_config(), "-n"))) == {}


def test_an_upgrade_from_results_without_identities_plans_nothing(campaign, tmp_path):
    """Results written before identity files existed (and results/ copied elsewhere) are kept."""
    workflow, tree = campaign
    old = tmp_path / "old"
    shutil.copytree(tree / "results", old / "results")
    for f in (old / "results" / "metrics").rglob("*.json"):
        rec = json.loads(f.read_text())
        rec.pop("identity", None)
        f.write_text(json.dumps(rec))
    jobs = planned(run(workflow, old, two_experiment_config(), "-n"))
    assert result_jobs(jobs) == {}, jobs


def test_a_result_edit_plans_its_runs_and_stops_before_deleting(campaign):
    workflow, tree = campaign
    cfg = two_experiment_config()
    cfg["experiments"]["scratch"]["recipe"] = {"base_lr": 0.005}
    dry = run(workflow, tree, cfg, "-n", "-p")
    jobs = result_jobs(planned(dry))
    # only the random-init family: its trunk and two tails, every segment and milestone of them
    n_jobs = len(re.findall(r"(?:family|run)=R18-GN-random", dry.stdout))
    assert n_jobs > 0 and not re.search(r"(?:family|run)=R18-GN-imagenet", dry.stdout)
    assert set(jobs) == {"train_segment", "train_final", "evaluate"}, jobs
    assert jobs["train_final"] == 2  # the two random-init runs' models
    assert sum(jobs.values()) == n_jobs
    assert "retrains finished work" in dry.stderr and "GPU-h" in dry.stderr
    assert "run.recipe.base_lr: 0.0025 -> 0.005" in dry.stderr

    before = snapshot(tree)
    real = run(workflow, tree, cfg)
    assert real.returncode != 0
    err = real.stderr
    assert "retrains finished work" in err and "GPU-hours at stake" in err
    assert "run.recipe.base_lr: 0.0025 -> 0.005" in err and "confirm_rerun=true" in err
    assert "R18-GN-random-synthetic-2x-s0" in err and "R18-GN-imagenet" not in err.split("retrains finished work")[1]
    assert 'File "' not in err and "Traceback" not in err, err[-3000:]  # the guard's message alone, not a crash
    assert snapshot(tree) == before  # nothing ran, nothing was deleted or rewritten

    # the edit undone: nothing to redo, although the identity file was rewritten twice
    assert result_jobs(planned(run(workflow, tree, two_experiment_config(), "-n"))) == {}


def test_a_new_eval_period_says_which_runs_must_retrain(campaign):
    workflow, tree = campaign
    cfg = two_experiment_config()
    cfg["eval_period"] = 3  # new milestones whose checkpoints are gone
    before = snapshot(tree)
    dry = run(workflow, tree, cfg, "-n")
    assert planned(dry).get("train_segment", 0) > 0 and "evaluate" in planned(dry)
    assert "checkpoints that new evaluations need are gone" in dry.stderr
    real = run(workflow, tree, cfg)
    assert real.returncode != 0 and "GPU-hours at stake" in real.stderr
    assert 'File "' not in real.stderr, real.stderr[-3000:]
    assert snapshot(tree) == before


def test_confirmed_rerun_retrains_exactly_the_edited_runs(campaign, tmp_path):
    workflow, tree = campaign
    copy_ = tmp_path / "tree"
    shutil.copytree(tree, copy_, symlinks=True)
    cfg = two_experiment_config()
    cfg["experiments"]["scratch"]["recipe"] = {"base_lr": 0.005}
    before = snapshot(copy_)
    proc = run(workflow, copy_, cfg, "--config", "confirm_rerun=true")
    assert proc.returncode == 0, proc.stderr[-4000:]
    after = snapshot(copy_)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed and all("R18-GN-random" in k for k in changed)
    assert all(before[k] == after[k] for k in before if "R18-GN-imagenet" in k)
    for k in changed:
        assert json.loads((copy_ / k).read_text())["identity"] != json.loads(before[k][1].decode())["identity"]
    assert result_jobs(planned(run(workflow, copy_, cfg, "-n"))) == {}
