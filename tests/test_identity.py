"""Result identity on the paper grid (pure Python): which edits change which lines' identity."""

from __future__ import annotations

import copy
import json
import os

from conftest import ROOT
from rethink import config, grid, identity, plan
from rethink.identity_files import IdentityFiles
from rethink.paths import Paths

PAPER = config.load(ROOT / "config.yaml")


def hashes(cfg: dict, tmp_path=None) -> dict[tuple[str, str], str]:
    cfg = copy.deepcopy(cfg)
    if tmp_path is not None:
        cfg["workdir"] = str(tmp_path / "work")
    p = plan.Plan(grid.build(config.validate(cfg, "test"), "test"))
    identities = IdentityFiles(Paths(p.grid.config, p), write=tmp_path is not None)
    return {key: identities.line_identity(*key)[1] for key in p.lines}


BASE = hashes(PAPER)


def test_operational_fields_change_no_identity():
    cfg = copy.deepcopy(PAPER)
    cfg.setdefault("recipe", {}).update(num_workers=17, checkpoint_period=123, eval_gpus=3)
    cfg["runtime_margin"] = 4
    cfg.setdefault("resources", {})["cpus_per_gpu"] = 9
    cfg["seconds_per_iter"] = []
    for exp in cfg["experiments"].values():
        exp["description"] = "edited"
    assert hashes(cfg) == BASE


def test_on_bad_data_at_its_default_changes_no_identity():
    """datasets.<name>.on_bad_data error is what a dataset without the field does; skip can
    prepare other data, so it changes the lines that train on that dataset, and only those."""
    cfg = copy.deepcopy(PAPER)
    for spec in cfg["datasets"].values():
        spec["on_bad_data"] = "error"
    assert hashes(cfg) == BASE
    cfg["datasets"]["voc"]["on_bad_data"] = "skip"
    changed = {key for key, h in hashes(cfg).items() if h != BASE[key]}
    p = plan.Plan(grid.build(config.validate(copy.deepcopy(PAPER), "test"), "test"))
    on_voc = {key for key, ln in p.lines.items() if p.run(ln.owner).data == "voc"}
    assert changed == on_voc and on_voc


def test_one_experiments_lr_changes_only_its_lines():
    cfg = copy.deepcopy(PAPER)
    cfg["experiments"]["fig6_keypoints"].setdefault("recipe", {})["base_lr"] = 0.03
    new = hashes(cfg)
    changed = {k for k in BASE if new.get(k) != BASE[k]}
    p = plan.Plan(grid.build(config.validate(copy.deepcopy(PAPER), "t"), "t"))
    mine = {k for k, ln in p.lines.items() if "fig6_keypoints" in p.run(ln.owner).experiments}
    assert changed and changed == mine


def test_a_new_schedule_keeps_the_trunk_and_the_other_tails():
    cfg = copy.deepcopy(PAPER)
    cfg["axes"]["schedule"]["7x"] = {"x": 7}
    cfg["experiments"]["table1_r50_gn"]["schedule"].append("7x")
    new = hashes(cfg)
    assert all(new[k] == v for k, v in BASE.items() if k in new)
    assert any(k[1] == "7x" for k in new if k not in BASE)


def test_files_are_written_once_and_a_new_file_is_dated_before_any_result(tmp_path):
    hashes(PAPER, tmp_path)
    files = sorted((tmp_path / "work" / "identity").rglob("*.json"))
    assert len(files) >= len(BASE)
    assert all(os.stat(f).st_mtime == identity.UNDATED for f in files)
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    hashes(PAPER, tmp_path)  # same content: nothing rewritten
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes
    cfg = copy.deepcopy(PAPER)
    cfg["experiments"]["fig6_keypoints"].setdefault("recipe", {})["base_lr"] = 0.03
    hashes(cfg, tmp_path)
    newer = [f for f in files if f.stat().st_mtime > identity.UNDATED]
    assert newer and len(newer) < len(BASE)
    kept = [f for f in (tmp_path / "work" / "identity").rglob("*.json") if f not in mtimes]
    assert len(kept) == len(newer)  # the previous content of each, kept for the diff
    old = json.loads(kept[0].read_text())
    new = json.loads(next(f for f in newer if str(f).startswith(str(kept[0]).rsplit(".", 2)[0])).read_text())
    assert identity.diff(old["content"], new["content"]) == [
        "run.recipe.base_lr: 0.02 -> 0.03",
        "schedule.base_lr: 0.02 -> 0.03",
    ]


def test_an_upgrade_of_the_workflow_keeps_every_identity():
    """The identity of every line of config.yaml and configs/tiny.yaml, as the workflow computed it
    when the line first existed (tests/data/identity_pins.json). A new field, a new default, a
    renamed key that changes one of them would make an upgraded workflow retrain finished work: a
    field added later must be left out of the identity at its default (rethink.identity). Pin a
    line anew only for a change that really changes its result, and say so in the commit."""
    pins = json.loads((ROOT / "tests" / "data" / "identity_pins.json").read_text())
    for name, lines in pins.items():
        cfg = config.validate(config.load(ROOT / name), name)
        p = plan.Plan(grid.build(cfg, name))
        identities = IdentityFiles(Paths(cfg, p))
        now = {f"{f}/{ln}": identities.line_identity(f, ln)[1] for f, ln in p.lines}
        changed = sorted(k for k, h in lines.items() if k in now and now[k] != h)
        assert not changed, f"{name}: the identity of {len(changed)} line(s) changed, e.g. {changed[:3]}"
        assert set(lines) <= set(now), f"{name}: lines gone from the plan: {sorted(set(lines) - set(now))[:3]}"
