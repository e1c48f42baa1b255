"""A job's command line names its config snapshot and itself; the script rebuilds its spec
(rethink.jobs). Checked on the paper grid and on the real Snakemake's dry run of the tiny grid."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT, load_yaml, small_tiny_config, snakemake, write_yaml
from rethink import config, grid, identity, jobs, plan
from rethink.job_specs import JobSpecs
from rethink.paths import Paths

PY = sys.executable


def paper_specs(tmp_path) -> tuple[JobSpecs, str]:
    cfg = config.validate(load_yaml(ROOT / "config.yaml"), "config.yaml")
    cfg["workdir"] = str(tmp_path / "work")
    return JobSpecs(Paths(cfg, plan.Plan(grid.build(cfg, "config.yaml")))), jobs.write_snapshot(cfg, "config.yaml")


class WC(dict):
    __getattr__ = dict.__getitem__


def test_every_rule_gets_the_spec_its_job_specs_build(tmp_path):
    P, snap = paper_specs(tmp_path)
    Q = jobs.load(snap)
    seg = max(P.plan.segments.values(), key=lambda s: (s.family, s.line, s.end))
    ms = next(iter(P.plan.milestones.values()))
    tta = next(iter(P.plan.tta_milestones.values()))
    run = next(r for r in P.plan.grid.runs.values() if P.paths.init_kind(r.init) == "staged")
    cases = {
        jobs.key("train_segment", WC(family=seg.family, line=seg.line, iter=f"{seg.end:07d}")): P.train_spec(seg),
        jobs.key("train_final", WC(run=run.run_id)): P.train_spec(
            P.plan.final_segment(run.run_id), output=P.paths.model(run.run_id)
        ),
        jobs.key("evaluate", WC(family=ms.family, line=ms.line, iter=f"{ms.iteration:07d}")): P.eval_spec(ms),
        jobs.key("evaluate_tta", WC(family=tta.family, line=tta.line, iter=f"{tta.iteration:07d}")): P.eval_spec(
            tta, tta=True
        ),
        jobs.key("prepare_data", WC(data=run.data)): P.data_spec(run.data),
        jobs.key("stage_weights", WC(init=run.init, backbone=run.backbone, norm=run.norm)): P.stage_spec(
            run.init, run.backbone, run.norm
        ),
    }
    for key, want in cases.items():
        assert jobs.spec(Q, key) == want, key
    assert all(jobs.spec(Q, k)["output"].startswith(str(tmp_path / "work")) for k in cases if "evaluate" not in k)


def test_the_snapshot_is_written_once_and_dated_before_any_result(tmp_path):
    P, snap = paper_specs(tmp_path)
    assert os.stat(snap).st_mtime == identity.UNDATED
    assert re.fullmatch(r"config-[0-9a-f]{16}\.json", os.path.basename(snap))
    os.utime(snap, (identity.UNDATED + 5, identity.UNDATED + 5))
    assert jobs.write_snapshot(P.cfg, "config.yaml") == snap
    assert os.stat(snap).st_mtime == identity.UNDATED + 5  # not rewritten
    cfg2 = {**P.cfg, "recipe": {**P.cfg["recipe"], "num_workers": 7}}  # an operational edit: another file
    snap2 = jobs.write_snapshot(cfg2, "config.yaml")
    assert snap2 != snap and os.path.exists(snap) and os.stat(snap2).st_mtime == identity.UNDATED
    assert jobs.read_snapshot(snap) == (P.cfg, "config.yaml")


@pytest.mark.parametrize(
    "content, says",
    [
        (None, "config snapshot not found"),
        (b"\xff\xfe garbage", "unreadable config snapshot"),
        (b'{"workdir": "w"}', "not a config snapshot"),
    ],
)
def test_a_bad_snapshot_is_named(tmp_path, content, says):
    path = tmp_path / "config-0.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(jobs.JobError, match=says) as e:
        jobs.read_snapshot(str(path))
    assert str(path) in str(e.value)


def _script(script, *args):
    return subprocess.run(
        [PY, str(ROOT / "workflow_scripts" / script), *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_a_script_prints_its_spec_and_refuses_a_job_not_in_the_plan(tmp_path):
    P, snap = paper_specs(tmp_path)
    ms = next(iter(P.plan.milestones.values()))
    key = jobs.key("evaluate", WC(family=ms.family, line=ms.line, iter=f"{ms.iteration:07d}"))
    ok = _script("evaluate.py", "--config", snap, "--job", key, "--print-spec")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == P.eval_spec(ms)
    (tmp_path / "spec.json").write_text(ok.stdout)  # a spec file by hand: the same spec, checked the same way
    bad_field = _script("train.py", "--spec", str(tmp_path / "spec.json"), "--print-spec")
    assert bad_field.returncode == 1 and "lacks field(s) start, end" in bad_field.stderr
    for job, says in [
        (f"evaluate/{ms.family}/{ms.line}/0000001", "not in the plan"),
        ("evaluate/a/b", "evaluate takes family/line/iter"),
        ("evaluate/a/b/$(touch x)", "evaluate takes family/line/iter"),
        ("teach/a", "unknown rule 'teach'"),
    ]:
        proc = _script("evaluate.py", "--config", snap, "--job", job)
        assert proc.returncode == 1 and says in proc.stderr and proc.stderr.startswith("evaluate: error:"), proc.stderr
    usage = _script("evaluate.py", "--job", key)
    assert usage.returncode == 2 and "give --config SNAPSHOT --job KEY, or --spec" in usage.stderr


def test_every_command_line_of_the_tiny_grid_is_short_and_names_its_snapshot(tmp_path):
    write_yaml(tmp_path / "tiny.yaml", small_tiny_config())
    proc = snakemake(
        ["-n", "-p", "--profile", str(ROOT / "profiles" / "tiny"), "--configfile", str(tmp_path / "tiny.yaml")],
        cwd=tmp_path,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    cmds = [ln.removeprefix("Shell command: ") for ln in out.splitlines() if "workflow_scripts/" in ln]
    snaps = sorted(os.listdir(tmp_path / "work" / "specs"))
    assert len(snaps) == 1 and len(cmds) >= 30, (snaps, len(cmds))
    for cmd in cmds:
        assert "{" not in cmd and f"work/specs/{snaps[0]}" in cmd, cmd
        # less the interpreter's and the checkout's own path (the scripts), a line reads at a glance
        assert len(cmd.replace(sys.executable, "python").replace(str(ROOT), "")) < 250, cmd
