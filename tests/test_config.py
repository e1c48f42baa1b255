"""Bad configurations stop the real `snakemake -n` before any job, with a message that names
the config file, the field and the value."""

from __future__ import annotations

import copy

import pytest

from conftest import ROOT, load_yaml, snakemake, write_yaml

TINY = load_yaml(ROOT / "configs" / "tiny.yaml")


def mutate(fn):
    cfg = copy.deepcopy(TINY)
    fn(cfg)
    return cfg


def _set(path, value):
    def fn(cfg):
        node = cfg
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value

    return fn


def _del(path):
    def fn(cfg):
        node = cfg
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]

    return fn


def _two_experiments_same_id(cfg):
    cfg["experiments"]["other"] = {"recipe": {"base_lr": 0.01}}


def _family_mixed_recipe(cfg):
    cfg["experiments"] = {
        "a": {"schedule": ["2x"], "recipe": {"base_lr": 0.01}},
        "b": {"schedule": ["3x"]},
    }


# (name, mutation, words that must all appear in the error)
BAD = [
    ("unknown backbone", _set(["axes", "backbone"], ["R99"]), ["axes.backbone[0]", "'R99'"]),
    ("unknown norm", _set(["axes", "norm"], ["LayerNorm"]), ["axes.norm[0]", "'LayerNorm'"]),
    ("zero iterations per 1x", _set(["recipe", "iters_per_x"], 0), ["recipe.iters_per_x", "0"]),
    (
        "negative iterations",
        _set(["axes", "schedule"], {"2x": {"iterations": -5}}),
        ["axes.schedule.2x.iterations", "-5"],
    ),
    ("zero schedule multiple", _set(["axes", "schedule"], {"0x": {"x": 0}}), ["axes.schedule.0x.x", "0"]),
    (
        "LR drop before iteration 0",
        _set(["recipe", "lr_drops_from_end"], [100]),
        ["lr_drops_from_end", "100", "outside"],
    ),
    ("LR drop at the end", _set(["recipe", "lr_drops_from_end"], [0]), ["recipe.lr_drops_from_end[0]", "0"]),
    ("misspelt top-level key", _set(["eval_perod"], 10), ["eval_perod"]),
    ("misspelt recipe key", _set(["recipe", "base_lrr"], 0.1), ["recipe", "base_lrr"]),
    (
        "misspelt experiment key",
        _set(["experiments", "table1_tiny", "schedules"], ["2x"]),
        ["experiments.table1_tiny", "schedules"],
    ),
    (
        "tta in a recipe (evaluation only)",
        _set(["experiments", "table1_tiny", "recipe"], {"tta": True}),
        ["experiments.table1_tiny.recipe.tta", "experiments.table1_tiny.test_aug"],
    ),
    (
        "test_aug not a boolean",
        _set(["experiments", "table1_tiny", "test_aug"], "yes"),
        ["experiments.table1_tiny.test_aug", "'yes'"],
    ),
    (
        "same run id, different settings",
        _two_experiments_same_id,
        ["R18-GN-random-synthetic-2x-s0", "table1_tiny", "base_lr"],
    ),
    ("family members with different recipes", _family_mixed_recipe, ["family", "base_lr"]),
    (
        "experiment names a missing axis value",
        _set(["experiments", "table1_tiny", "backbone"], ["R50"]),
        ["experiments.table1_tiny.backbone[0]", "'R50'", "axes.backbone"],
    ),
    (
        "experiment names a missing schedule",
        _set(["experiments", "table1_tiny", "schedule"], ["9x"]),
        ["experiments.table1_tiny.schedule[0]", "'9x'"],
    ),
    ("wrong type: batch as string", _set(["recipe", "batch"], "two"), ["recipe.batch", "'two'"]),
    ("wrong type: seed list of str", _set(["axes", "seed"], ["zero"]), ["axes.seed[0]", "'zero'"]),
    ("wrong type: eval_period float", _set(["eval_period"], 2.5), ["eval_period", "2.5"]),
    ("unknown engine", _set(["engine"], "mmdet"), ["engine", "'mmdet'"]),
    ("undefined dataset", _set(["axes", "data"], ["coco_full"]), ["axes.data[0]", "coco_full", "datasets"]),
    ("undefined init", _set(["axes", "init"], ["random", "moco"]), ["axes.init[1]", "moco", "inits"]),
    (
        "bad dataset kind",
        _set(["datasets", "synthetic", "kind"], "imagenet"),
        ["datasets.synthetic.kind", "'imagenet'"],
    ),
    ("bad experiment name", lambda c: c["experiments"].update({"Bad-Name": {}}), ["experiments", "Bad-Name"]),
    (
        "bad variant",
        _set(["experiments", "table1_tiny", "variant"], "x-y"),
        ["experiments.table1_tiny.variant", "'x-y'"],
    ),
    ("warm-up longer than the schedule", _set(["recipe", "warmup_iters"], 1000), ["warmup_iters", "1000"]),
    ("missing axes", _del(["axes"]), ["axes"]),
    ("negative momentum", _set(["recipe", "momentum"], -0.9), ["recipe.momentum", "-0.9"]),
    (
        "head channels GroupNorm cannot split",
        _set(["recipe", "head_channels"], 100),
        ["recipe.head_channels", "100", "multiple of 32"],
    ),
    (
        "staged weights missing for a run",
        lambda c: c["inits"].update({"imagenet": {"kind": "staged", "weights": {}}}),
        ["inits.imagenet.weights", "R18-GN"],
    ),
    ("scale_aug with one size", lambda c: c["recipe"].update({"scale_aug": True}), ["min_size_train", "scale_aug"]),
    (
        "schedule multiple with extra zeros",
        _set(["axes", "schedule"], {"2x": {"x": 1.0e30}}),
        ["axes.schedule.2x.x", "1e+30", "maximum"],
    ),
    (
        "iterations per 1x with extra zeros",
        _set(["recipe", "iters_per_x"], 300000000),
        ["recipe.iters_per_x", "300000000"],
    ),
    (
        "schedule iterations with extra zeros",
        _set(["axes", "schedule"], {"2x": {"iterations": 600000000}}),
        ["axes.schedule.2x.iterations", "600000000"],
    ),
    (
        "a run too long for the plan",
        lambda c: c["recipe"].update(iters_per_x=1000000) or c["axes"]["schedule"].update({"2x": {"x": 20}}),
        ["axes.schedule.2x.x (20) x recipe.iters_per_x (1000000)", "20,000,000 iterations"],
    ),
    (
        "evaluations too many to plan",
        lambda c: c.update(eval_period=1) or c["recipe"].update(iters_per_x=100000),
        ["eval_period 1", "max_segment_iters", "limit is 100,000"],
    ),
    (
        "batch not divisible by the GPUs",
        lambda c: c["recipe"].update(batch=6, gpus=4),
        ["recipe.batch 6", "recipe.gpus 4", "experiments.table1_tiny"],
    ),
    (
        "train set smaller than a batch",
        lambda c: c["recipe"].update(batch=8) or c["datasets"]["synthetic"].update(train_size=4),
        ["datasets.synthetic.train_size", "value 4", "recipe.batch 8"],
    ),
    ("empty workdir", _set(["workdir"], ""), ["workdir", "''", "empty path"]),
    ("blank results", _set(["results"], "  "), ["results", "'  '", "empty path"]),
    ("workdir at the filesystem root", _set(["workdir"], "/"), ["workdir", "'/'", "filesystem root"]),
    ("results at the filesystem root", _set(["results"], "//"), ["results", "'//'", "filesystem root"]),
    ("newline in a workdir", _set(["workdir"], "work\nother"), ["workdir", "control character"]),
    (
        "coco dataset without a root",
        lambda c: c["datasets"].update(
            mycoco={
                "kind": "coco",
                "train_images": "train",
                "train_annotations": "a.json",
                "val_images": "val",
                "val_annotations": "b.json",
            }
        ),
        ["datasets.mycoco", "'root' is a required property", "for kind coco"],
    ),
    (
        "coco annotations given as a list",
        lambda c: c["datasets"].update(
            mycoco={
                "kind": "coco",
                "root": "/data",
                "train_images": "train",
                "train_annotations": ["a.json", "b.json"],
                "val_images": "val",
                "val_annotations": "b.json",
            }
        ),
        ["datasets.mycoco.train_annotations", "is not of type 'string'"],
    ),
    (
        "voc dataset without annotations",
        lambda c: c["datasets"].update(myvoc={"kind": "voc", "root": "/data"}),
        ["datasets.myvoc", "'train_annotations' is a required property", "for kind voc"],
    ),
    (
        "every experiment disabled",
        lambda c: [e.update(enabled=False) for e in c["experiments"].values()],
        ["experiments", "every experiment has enabled: false"],
    ),
    (
        "enabled not a boolean",
        _set(["experiments", "table1_tiny", "enabled"], "no"),
        ["experiments.table1_tiny.enabled", "'no'"],
    ),
    (
        "seconds_per_iter missing a combination",
        _set(["seconds_per_iter"], [{"backbone": "R50", "norm": "GN", "gpus": 8, "seconds": 0.3}]),
        ["seconds_per_iter", "R18"],
    ),
]


@pytest.mark.parametrize("name,fn,words", BAD, ids=[b[0] for b in BAD])
def test_bad_config_stops_dry_run(tmp_path, name, fn, words):
    cfg_file = write_yaml(tmp_path / "bad.yaml", mutate(fn))
    proc = snakemake(["-n", "--configfile", str(cfg_file)], cwd=tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{name}: snakemake accepted a bad config:\n{out[-2000:]}"
    assert str(cfg_file) in out, f"{name}: error does not name the config file:\n{out[-2000:]}"
    for w in words:
        assert w in out, f"{name}: error lacks {w!r}:\n{out[-3000:]}"
    assert "Job stats" not in out  # stopped before planning any job
    assert not (tmp_path / "work").exists()


def test_good_tiny_config_dry_runs(tmp_path):
    proc = snakemake(["-n", "--configfile", str(ROOT / "configs" / "tiny.yaml")], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train_segment" in proc.stdout


def test_defaults_filled():
    from rethink import config

    cfg = config.validate(copy.deepcopy(TINY), "tiny")
    assert cfg["max_segment_iters"] == TINY["max_segment_iters"]
    assert cfg["runtime_margin"] == TINY["runtime_margin"]
    assert cfg["recipe"]["momentum"] == 0.9  # schema default
    assert "recipe" not in cfg["experiments"]["table1_tiny"]  # overrides only, never defaults


def test_experiment_recipe_overrides_top_level():
    from rethink import config, grid

    raw = copy.deepcopy(TINY)
    del raw["experiments"]["seeds_tiny"]  # it shares table1_tiny's 3x seed-0 runs, which must agree
    raw["experiments"]["table1_tiny"]["recipe"] = {"base_lr": 0.001}
    g = grid.build(config.validate(raw, "tiny"), "tiny")
    assert {r.recipe["base_lr"] for r in g.runs.values()} == {0.001}
    assert {r.recipe["batch"] for r in g.runs.values()} == {TINY["recipe"]["batch"]}


def test_missing_coco_root_stops_a_real_run_before_any_job(tmp_path):
    cfg = load_yaml(ROOT / "config.yaml")
    cfg["datasets"]["coco_full"]["root"] = str(tmp_path / "no-coco-here")
    cfg_file = write_yaml(tmp_path / "paper.yaml", cfg)
    proc = snakemake(["--cores", "1", "--configfile", str(cfg_file)], cwd=tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "datasets.coco_full.root" in out and str(tmp_path / "no-coco-here") in out, out[-3000:]
    # nothing but the identity files and the config snapshot the workflow writes when it parses a config
    assert (
        sorted(p.name for p in (tmp_path / "work").iterdir()) == ["identity", "specs"]
        and not (tmp_path / "results").exists()
    )
    # planning needs no data: the dry run and the grid summary still work
    assert snakemake(["-n", "--configfile", str(cfg_file)], cwd=tmp_path, timeout=120).returncode == 0
    grid = snakemake(["grid", "--configfile", str(cfg_file)], cwd=tmp_path, timeout=120)
    assert grid.returncode == 0 and "trunk sharing saves" in grid.stdout, grid.stderr[-2000:]


@pytest.mark.parametrize(
    "extra, key",
    [
        ("eval_period: 5\n", "eval_period"),  # a top-level key given twice
        ("experiments:\n  table1_tiny: {description: again}\n  table1_tiny: {description: twice}\n", "table1_tiny"),
    ],
)
def test_a_key_given_twice_stops_dry_run(tmp_path, extra, key):
    """YAML would keep the last of two equal keys silently; the workflow names the file, the line and the key."""
    text = (ROOT / "configs" / "tiny.yaml").read_text()
    if extra.startswith("experiments"):
        text = text.split("\nexperiments:", 1)[0] + "\n"
    cfg_file = tmp_path / "twice.yaml"
    cfg_file.write_text(text + extra)
    line = len((text + extra).splitlines())
    proc = snakemake(["-n", "--configfile", str(cfg_file)], cwd=tmp_path, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert f"{cfg_file}: line {line}," in out and f"key {key!r} is given twice" in out, out[-2000:]
    assert "Job stats" not in out and not (tmp_path / "work").exists()


def test_a_bad_command_line_value_is_blamed_on_the_command_line(tmp_path):
    proc = snakemake(
        ["-n", "--configfile", str(ROOT / "configs" / "tiny.yaml"), "--config", "eval_period=0"],
        cwd=tmp_path,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "configs/tiny.yaml (with --config eval_period): eval_period: value 0" in out, out[-2000:]
    assert "Job stats" not in out and not (tmp_path / "work").exists()


def test_a_mapping_on_the_command_line_is_typed_as_in_a_config_file(tmp_path):
    """Snakemake reads `--config 'recipe={"batch": 4}'` with every scalar as text; the workflow types it as
    YAML would."""
    proc = snakemake(
        [
            "-n",
            "--configfile",
            str(ROOT / "configs" / "tiny.yaml"),
            "--config",
            'recipe={"batch": 4, "base_lr": 0.01, "scale_aug": false}',
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "train_segment" in proc.stdout
    bad = snakemake(
        ["-n", "--configfile", str(ROOT / "configs" / "tiny.yaml"), "--config", 'recipe={"batch": "four"}'],
        cwd=tmp_path,
        timeout=120,
    )
    out = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "recipe.batch" in out and "'four'" in out, out[-2000:]


def test_a_local_run_asking_for_gpus_without_cuda_stops_before_any_job(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: a local GPU run is allowed here")
    cfg = mutate(
        lambda c: (
            c["recipe"].update(gpus=1)
            or c["seconds_per_iter"].append({"backbone": "R18", "norm": "GN", "gpus": 1, "seconds": 0.1})
        )
    )
    cfg["workdir"], cfg["results"] = str(tmp_path / "work"), str(tmp_path / "results")
    cfg_file = write_yaml(tmp_path / "gpu.yaml", cfg)
    proc = snakemake(["--cores", "1", "--configfile", str(cfg_file)], cwd=tmp_path, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert f"{cfg_file}: recipe.gpus: value 1" in out and "0 CUDA device(s)" in out and "Nothing was run" in out, out[
        -3000:
    ]
    assert 'File "' not in out and "Traceback" not in out, out[-3000:]  # the message alone, not a crash
    assert not (tmp_path / "work" / "data").exists() and not (tmp_path / "results").exists()
    assert snakemake(["-n", "--configfile", str(cfg_file)], cwd=tmp_path, timeout=120).returncode == 0
