"""Configs nobody wrote by hand (tests/lab/fuzz_config.py): mutations of configs/tiny.yaml and config.yaml,
given as one file, two layered files, `--config` or a profile. Planning either accepts them or refuses
them with exit 1 and a message naming the file (or profile, or --config), the field and the value:
never a traceback, a hang, a file written outside the workdir and results, or an accepted config that
a job then fails on. Most examples run what a dry run runs in this process; a seeded sample runs the
real `snakemake -n` too and must end the same way. The long campaign: bench/fuzz.py (README).
Below them, the failures the fuzzer found and the issue's cases, each through the real Snakemake."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings

from conftest import ROOT, load_yaml, snakemake, write_yaml
from rethink_lab import fuzz_config as fc

TINY = load_yaml(ROOT / "configs" / "tiny.yaml")
QUICK = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))


@seed(20261206)
@settings(QUICK, max_examples=400)
@given(fc.examples())
def test_planning_accepts_or_refuses_clearly_in_process(example):
    with tempfile.TemporaryDirectory(prefix="fuzzcfg-") as tmp:
        folder = Path(tmp) / "a" / "b" / "c"
        folder.mkdir(parents=True)
        got = fc.in_process(example, folder)
    assert not got.failed, f"{got.kind}: {example}\n{got.message}"


@seed(6)
@settings(QUICK, max_examples=10)
@given(fc.examples())
def test_the_real_dry_run_ends_as_the_in_process_check_says(example):
    got, real, _ = fc.run_one(example, with_real=True)
    assert not got.failed and not real.failed, f"{got.kind} / {real.kind}: {example}\n{got.message}\n{real.message}"


def _one_file(cfg: dict, mutation: str = "hand-made") -> fc.Example:
    return fc.Example("tiny", [mutation], {"c.yaml": yaml.safe_dump(cfg, sort_keys=False)}, ["c.yaml"])


def test_an_accepted_mutation_dry_runs_and_writes_only_under_workdir_and_results(tmp_path):
    cfg = copy.deepcopy(TINY)
    cfg["workdir"], cfg["results"] = "w d $(touch PWNED)", f"{fc.TMP}/r é"
    cfg["recipe"]["base_lr"] = 0.005
    got, real, _ = fc.run_one(_one_file(cfg), with_real=True)
    assert (got.kind, real.kind) == ("accepted", "accepted"), f"{got.message}\n{real.message}"


# ------------------------------------------------------------------ regressions (found by the fuzzer)
def test_a_float_seed_is_refused_naming_the_field(tmp_path):
    """JSON Schema counts 2.0 as an integer; the run id then read 's2.0' and planning stopped with a
    message naming neither file nor field."""
    cfg = copy.deepcopy(TINY)
    cfg["experiments"]["seeds_tiny"]["seed"] = [0, 2.0]
    got = fc.in_process(_one_file(cfg), tmp_path)
    assert got.kind == "refused" and "experiments.seeds_tiny.seed[1]: value 2.0" in got.message, got.message


# ------------------------------------------------------------------ the cases, real Snakemake
def test_a_profile_config_value_is_blamed_on_the_profile_and_printed_without_a_stack_line(tmp_path):
    prof = tmp_path / "prof"
    prof.mkdir()
    write_yaml(prof / "config.yaml", {"configfile": str(ROOT / "configs" / "tiny.yaml"), "config": ["eval_period=0"]})
    proc = snakemake(["-n", "--profile", str(prof)], cwd=tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-2000:]
    assert f"{prof / 'config.yaml'} (config: eval_period): eval_period: value 0" in out, out[-2000:]
    assert 'File "' not in out and "Traceback" not in out and "common.smk" not in out, out[-2000:]
    assert not (tmp_path / "work").exists()


def test_a_yte_template_is_refused_saying_why(tmp_path):
    cfg_file = tmp_path / "templ.yaml"
    cfg_file.write_text(
        "__use_yte__: true\n" + (ROOT / "configs" / "tiny.yaml").read_text() + "?if True:\n  eval_period: 10\n"
    )
    proc = snakemake(["-n", "--configfile", str(cfg_file)], cwd=tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-2000:]
    assert f"{cfg_file}: __use_yte__: value True: a YTE template" in out and "Python code" in out, out[-2000:]
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "text, said",
    [
        ("eval_period: [1\n", "Config file is not valid JSON or YAML"),  # YAML syntax
        ("a:\n\tb: 1\n", "Config file is not valid JSON or YAML"),  # a tab
        ("", "Config file must be given as JSON or YAML with keys at top level"),
        ("- 1\n- 2\n", "Config file must be given as JSON or YAML with keys at top level"),
    ],
)
def test_snakemakes_own_loader_errors_are_explained_by_check_config(tmp_path, text, said):
    """Snakemake reads config files before the workflow runs, and says only what is above (README);
    workflow_scripts/check_config.py names the file, line and column."""
    import subprocess

    from conftest import PY

    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(text)
    proc = snakemake(["-n", "--configfile", str(cfg_file)], cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and said in proc.stdout + proc.stderr
    check = subprocess.run(
        [PY, str(ROOT / "workflow_scripts" / "check_config.py"), str(cfg_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 1 and check.stderr.startswith(f"{cfg_file}"), check.stderr
    assert "Traceback" not in check.stderr
    if text.strip() and not text.startswith("-"):
        assert ": line " in check.stderr, check.stderr


def test_check_config_accepts_the_shipped_configs_and_layers_like_snakemake():
    import subprocess

    from conftest import PY

    script = str(ROOT / "workflow_scripts" / "check_config.py")
    ok = subprocess.run([PY, script, str(ROOT / "configs" / "tiny.yaml")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "runs" in ok.stdout, ok.stderr
    bad = subprocess.run(
        [PY, script, str(ROOT / "configs" / "tiny.yaml"), "--config", "eval_period=0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "(with --config eval_period): eval_period: value 0" in bad.stderr, bad.stderr


def test_a_json_config_indented_with_tabs_is_read_as_snakemake_reads_it(tmp_path):
    """Snakemake tries JSON first; the workflow's own reader does too (YAML refuses the tabs)."""
    import json

    text = json.dumps(TINY, indent="\t")
    got = fc.in_process(fc.Example("tiny", ["json, tabs"], {"c.json": text}, ["c.json"]), tmp_path)
    assert got.kind == "accepted", got.message
    twice = fc.in_process(
        fc.Example("tiny", ["json, a key twice"], {"c.json": text[:-1] + ',\n\t"eval_period": 5}'}, ["c.json"]),
        tmp_path,
    )
    assert twice.kind == "refused" and "key 'eval_period' is given twice" in twice.message, twice.message


def test_a_mask_task_on_a_voc_set_is_refused_by_the_dry_run(tmp_path):
    """VOC is boxes only, known from the config: refused when planning, not when training starts."""
    cfg = load_yaml(ROOT / "config.yaml")
    cfg["experiments"]["voc_random"].setdefault("recipe", {})["task"] = "mask_rcnn"
    got = fc.in_process(fc.Example("paper", ["voc mask"], {"c.yaml": yaml.safe_dump(cfg)}, ["c.yaml"]), tmp_path)
    assert got.kind == "refused" and "recipe.task: value 'mask_rcnn': dataset voc is VOC, boxes only" in got.message, (
        got.message
    )
