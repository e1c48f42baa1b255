# over 400 lines: the runs a config asks for and the checks that refuse what it may not ask, one pass
"""The experiment grid: a validated config -> the runs it asks for.

A run is one training of one model: (backbone, norm, init, data, schedule, seed[, variant]),
with a full recipe. Its id (e.g. ``R50-GN-random-coco_full-6x-s0``) is its folder name, its
wildcard and its label in every table. Runs that differ only in their schedule form a
family, which shares its constant-LR trunk (see :mod:`rethink.plan`).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from .config import ConfigError, recipe_defaults
from .schedule import Schedule

# ids become paths, wildcards and shell arguments: nothing outside this pattern is accepted
RUN_ID_RE = re.compile(
    r"(?P<backbone>[A-Za-z0-9]+)-(?P<norm>[A-Za-z0-9]+)-(?P<init>[a-z][a-z0-9_]*)-(?P<data>[a-z][a-z0-9_]*)"
    r"-(?P<schedule>[0-9a-z][0-9a-z_.]*)-s(?P<seed>[0-9]+)(?:-(?P<variant>[a-z][a-z0-9_]*))?"
)
FAMILY_ID_RE = re.compile(
    r"[A-Za-z0-9]+-[A-Za-z0-9]+-[a-z][a-z0-9_]*-[a-z][a-z0-9_]*(?:-[0-9a-z][0-9a-z_.]*)?-s[0-9]+(?:-[a-z][a-z0-9_]*)?"
)
LINE_RE = re.compile(r"trunk|[0-9a-z][0-9a-z_.]*")

# the wildcard constraints Snakemake uses (strings, no anchors, no named groups: Snakemake would
# take "<name>" for a path variable)
WILDCARD_CONSTRAINTS = {
    "run": re.sub(r"\(\?P<\w+>", "(?:", RUN_ID_RE.pattern),
    "family": FAMILY_ID_RE.pattern,
    "line": LINE_RE.pattern,
    "iter": r"[0-9]{7}",
    "backbone": r"[A-Za-z0-9]+",
    "norm": r"[A-Za-z0-9]+",
    "init": r"[a-z][a-z0-9_]*",
    "data": r"[a-z][a-z0-9_]*",
}

AXES = ("backbone", "norm", "init", "data", "schedule", "seed")


def task_at(recipe: dict, iteration: int) -> str:
    """The architecture that trains iteration `iteration` (0-based) of a run: its recipe's task,
    except that a cascade_mask_rcnn run with `cascade_from_iter` N trains iterations < N as
    Mask R-CNN and switches to cascade at N (the paper's Table 3 from scratch). A checkpoint after
    k iterations holds the architecture of iteration k - 1."""
    switch = recipe.get("cascade_from_iter")
    if recipe["task"] == "cascade_mask_rcnn" and switch is not None and iteration < switch:
        return "mask_rcnn"
    return recipe["task"]


def recipe_at(recipe: dict, iteration: int) -> dict:
    """`recipe` as it trains iteration `iteration`: `task` is task_at(recipe, iteration)."""
    task = task_at(recipe, iteration)
    return recipe if task == recipe["task"] else {**recipe, "task": task}


def make_run_id(backbone, norm, init, data, schedule, seed, variant=None) -> str:
    rid = f"{backbone}-{norm}-{init}-{data}-{schedule}-s{seed}" + (f"-{variant}" if variant else "")
    if not RUN_ID_RE.fullmatch(rid):
        raise ConfigError(f"run id {rid!r} does not match the run id pattern {RUN_ID_RE.pattern}")
    return rid


def parse_run_id(rid: str) -> dict:
    m = RUN_ID_RE.fullmatch(rid)
    if not m:
        raise ValueError(f"not a run id: {rid!r} (pattern {RUN_ID_RE.pattern})")
    d = m.groupdict()
    d["seed"] = int(d["seed"])
    return d


@dataclass(frozen=True)
class Run:
    run_id: str
    family: str
    experiments: tuple[str, ...]
    backbone: str
    norm: str
    init: str
    data: str
    schedule_name: str
    seed: int
    variant: str | None
    share_trunk: bool
    recipe_json: str = field(repr=False)  # the full recipe, frozen as sorted JSON
    iterations: int = 0
    # evaluation only (not in settings(): it changes no training): the final checkpoint is also
    # evaluated with test-time augmentation
    test_aug: bool = False

    @cached_property
    def recipe(self) -> dict:
        return json.loads(self.recipe_json)

    @cached_property
    def schedule(self) -> Schedule:
        return Schedule.from_recipe(self.recipe, self.iterations)

    @property
    def task(self) -> str:
        return self.recipe["task"]

    def settings(self) -> dict:
        """Everything that decides what this run trains (its identity, besides the id)."""
        return {
            "backbone": self.backbone,
            "norm": self.norm,
            "init": self.init,
            "data": self.data,
            "schedule": self.schedule_name,
            "iterations": self.iterations,
            "seed": self.seed,
            "variant": self.variant,
            "share_trunk": self.share_trunk,
            "recipe": self.recipe,
        }

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "family": self.family, "experiments": list(self.experiments), **self.settings()}


@dataclass
class Grid:
    config: dict
    source: str
    runs: dict[str, Run]

    @cached_property
    def families(self) -> dict[str, list[Run]]:
        fams: dict[str, list[Run]] = {}
        for run in self.runs.values():
            fams.setdefault(run.family, []).append(run)
        for members in fams.values():
            members.sort(key=lambda r: (r.iterations, r.schedule_name))
        return fams

    def experiments_of(self, name: str) -> list[Run]:
        return [r for r in self.runs.values() if name in r.experiments]

    def seconds_per_iter(self, run: Run) -> float | None:
        gpus = run.recipe["gpus"]
        for entry in self.config.get("seconds_per_iter", []):
            if entry["backbone"] == run.backbone and entry["norm"] == run.norm and entry["gpus"] == gpus:
                return float(entry["seconds"])
        return None


def gpu_hours(iterations: int, seconds_per_iter: float, gpus: int) -> float:
    """Device-hours of training `iterations` at `seconds_per_iter` on `gpus` GPUs (a CPU job counts as one)."""
    return iterations * seconds_per_iter * max(gpus, 1) / 3600.0


def _check_axes_defined(config: dict, source: str) -> None:
    for axis, section, what in (("data", "datasets", "dataset"), ("init", "inits", "init")):
        for i, name in enumerate(config["axes"][axis]):
            if name not in config[section]:
                raise ConfigError(f"{source}: axes.{axis}[{i}]: {what} {name!r} is not defined under {section}")


def _check_axis_values(exp_name: str, exp: dict, config: dict, source: str) -> None:
    for axis in AXES:
        if axis == "seed":  # any seed may be run (a number, not a name that could be misspelt)
            continue
        allowed = list(config["axes"][axis])
        for i, value in enumerate(exp.get(axis, [])):
            if value not in allowed:
                raise ConfigError(
                    f"{source}: experiments.{exp_name}.{axis}[{i}]: {value!r} is not a value of axes.{axis} "
                    f"(allowed: {', '.join(map(str, allowed))})"
                )


def _recipe_diff(a: dict, b: dict) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _iterations(schedule_spec: dict, recipe: dict) -> int:
    if "iterations" in schedule_spec:
        return int(schedule_spec["iterations"])
    return int(round(schedule_spec["x"] * recipe["iters_per_x"]))


def _check_recipe(where: str, recipe: dict, iterations: int, schedule_name: str) -> None:
    for d in recipe["lr_drops_from_end"]:
        at = iterations - d
        if at <= 0 or at >= iterations:
            raise ConfigError(
                f"{where}.recipe.lr_drops_from_end: a drop {d} iterations before the end of schedule "
                f"{schedule_name!r} ({iterations} iterations) lies at iteration {at}, outside (0, {iterations})"
            )
    if len(set(recipe["lr_drops_from_end"])) != len(recipe["lr_drops_from_end"]):
        raise ConfigError(f"{where}.recipe.lr_drops_from_end: {recipe['lr_drops_from_end']} repeats a value")
    if recipe["warmup_iters"] >= iterations:
        raise ConfigError(
            f"{where}.recipe.warmup_iters: {recipe['warmup_iters']} is not shorter than schedule "
            f"{schedule_name!r} ({iterations} iterations)"
        )
    if recipe["scale_aug"] and len(recipe["min_size_train"]) != 2:
        raise ConfigError(f"{where}.recipe.min_size_train: scale_aug needs [lo, hi], got {recipe['min_size_train']}")
    if recipe["cascade_from_iter"] is not None:
        if recipe["task"] != "cascade_mask_rcnn":
            raise ConfigError(f"{where}.recipe.cascade_from_iter: set, but task is {recipe['task']!r}")
        if recipe["cascade_from_iter"] >= iterations:
            raise ConfigError(
                f"{where}.recipe.cascade_from_iter: {recipe['cascade_from_iter']} is not inside schedule "
                f"{schedule_name!r} ({iterations} iterations)"
            )


def _check_inits(config: dict, source: str, runs: Iterable[Run]) -> None:
    for run in runs:
        init = config["inits"][run.init]
        if init["kind"] == "staged":
            key = f"{run.backbone}-{run.norm}"
            if key not in init.get("weights", {}):
                raise ConfigError(
                    f"{source}: inits.{run.init}.weights: no weights for {key!r}, needed by run {run.run_id}"
                )


# Bounds on what multiplies into the plan, so an extra zero is an error, not a planner that runs out of
# memory: a run's length (the paper's longest, the X152 cascade, is 810k iterations) and the number of
# training and evaluation jobs (the paper's grid plans about 1,500).
MAX_RUN_ITERATIONS = 10_000_000
MAX_JOBS = 100_000


def _check_plan_size(config: dict, source: str, runs: list[Run]) -> None:
    """An upper bound on the plan's jobs (a segment per max_segment_iters and an evaluation per
    eval_period of every run, before trunk sharing) against MAX_JOBS."""
    eval_period, seg = int(config["eval_period"]), int(config["max_segment_iters"])
    jobs = sum(-(-r.iterations // eval_period) + -(-r.iterations // seg) for r in runs)
    if jobs > MAX_JOBS:
        raise ConfigError(
            f"{source}: eval_period {eval_period} and max_segment_iters {seg} would plan up to {jobs:,} training and "
            f"evaluation jobs for {len(runs)} runs; the limit is {MAX_JOBS:,} (raise eval_period or "
            f"max_segment_iters, or check the schedules for an extra zero)"
        )


def _check_batches(config: dict, source: str, runs: Iterable[Run], origin: dict) -> None:
    """What would fail inside the first training job: a batch the job's processes cannot split
    evenly, a training set smaller than one batch, a mask task on VOC (boxes only)."""
    for run in runs:
        batch, gpus = int(run.recipe["batch"]), int(run.recipe["gpus"])
        where = f"{source}: experiments.{origin[run.run_id]}"
        if gpus > 1 and batch % gpus:
            raise ConfigError(
                f"{where}: recipe.batch {batch} cannot be split evenly over recipe.gpus {gpus} "
                f"(run {run.run_id}): make the batch a multiple of the GPUs"
            )
        data = config["datasets"][run.data]
        if data["kind"] == "voc" and run.recipe["task"] in ("mask_rcnn", "cascade_mask_rcnn"):
            # known from the config (VOC is boxes only); a COCO set's masks are known once prepare_data
            # has read its JSON, and a mask task on a boxes-only one stops when training starts
            raise ConfigError(
                f"{where}: recipe.task: value {run.recipe['task']!r}: dataset {run.data} is VOC, "
                f"boxes only (run {run.run_id}); use task faster_rcnn"
            )
        field = "train_size" if data["kind"] == "synthetic" else "num_images"
        size = data.get(field)
        if size is not None and int(size) < batch:
            raise ConfigError(
                f"{source}: datasets.{run.data}.{field}: value {size}: fewer training images than "
                f"one batch (recipe.batch {batch} of run {run.run_id})"
            )


def build(config: dict, source: str = "config") -> Grid:
    """Validated config (defaults filled) -> Grid. Raises ConfigError naming file, field and value."""
    defaults = recipe_defaults()
    runs: dict[str, Run] = {}
    origin: dict[str, str] = {}
    _check_axes_defined(config, source)
    _check_enabled(config, source)
    for exp_name, exp in config["experiments"].items():
        if not exp.get("enabled", True):
            continue
        _check_axis_values(exp_name, exp, config, source)
        for run in _runs_of(config, source, exp_name, exp, defaults):
            rid = run.run_id
            if rid not in runs:
                runs[rid], origin[rid] = run, exp_name
                continue
            _check_same_settings(runs[rid], run, f"{source}: experiments.{exp_name}", origin[rid])
            runs[rid] = _merge_exps(runs[rid], exp_name, run.test_aug)
    grid = Grid(config=config, source=source, runs=runs)
    _check_families(grid, source, origin)
    _check_inits(config, source, runs.values())
    _check_batches(config, source, runs.values(), origin)
    _check_plan_size(config, source, list(runs.values()))
    _check_nodes(config, source, runs.values())
    _check_seconds_per_iter(grid, source)
    return grid


def _runs_of(config: dict, source: str, exp_name: str, exp: dict, defaults: dict) -> Iterator[Run]:
    """The runs experiment `exp_name` asks for: every combination of its axes' values, each
    checked as it is made (`defaults`: the recipe's)."""
    recipe = {**defaults, **config.get("recipe", {}), **(exp.get("recipe") or {})}
    where = f"{source}: experiments.{exp_name}"
    recipe_json = json.dumps(recipe, sort_keys=True)
    variant = exp.get("variant")
    share = exp.get("share_trunk", True)
    values = [exp.get(axis) or list(config["axes"][axis]) for axis in AXES]
    for backbone, norm, init, data, sched, seed in itertools.product(*values):
        iterations = _iterations(config["axes"]["schedule"][sched], recipe)
        _check_run_length(where, config["axes"]["schedule"][sched], sched, recipe, iterations)
        _check_recipe(where, recipe, iterations, sched)
        _check_vgg16_heads(where, backbone, recipe, defaults)
        rid = make_run_id(backbone, norm, init, data, sched, seed, variant)
        fam = f"{backbone}-{norm}-{init}-{data}-s{seed}" + (f"-{variant}" if variant else "") if share else rid
        yield Run(
            run_id=rid,
            family=fam,
            experiments=(exp_name,),
            backbone=backbone,
            norm=norm,
            init=init,
            data=data,
            schedule_name=sched,
            seed=seed,
            variant=variant,
            share_trunk=share,
            recipe_json=recipe_json,
            iterations=iterations,
            test_aug=bool(exp.get("test_aug", False)),
        )


def _check_enabled(config: dict, source: str) -> None:
    if not any(e.get("enabled", True) for e in config["experiments"].values()):
        raise ConfigError(f"{source}: experiments: every experiment has enabled: false; there is nothing to plan")


def _check_run_length(where: str, length: dict, sched: str, recipe: dict, iterations: int) -> None:
    if iterations > MAX_RUN_ITERATIONS:
        what = (
            f"axes.schedule.{sched}.iterations"
            if "iterations" in length
            else f"axes.schedule.{sched}.x ({length['x']}) x recipe.iters_per_x ({recipe['iters_per_x']})"
        )
        raise ConfigError(
            f"{where}: {what} gives {iterations:,} iterations; a run may have at most "
            f"{MAX_RUN_ITERATIONS:,} (the paper's longest has 810,000)"
        )


def _check_vgg16_heads(where: str, backbone: str, recipe: dict, defaults: dict) -> None:
    if backbone == "VGG16" and recipe["head_channels"] != defaults["head_channels"]:
        raise ConfigError(
            f"{where}.recipe.head_channels: {recipe['head_channels']}, but backbone VGG16 has "
            f"no FPN (its heads read conv5's 512 channels); set head_channels: "
            f"{defaults['head_channels']} in this experiment's recipe"
        )


def _check_same_settings(old: Run, run: Run, where: str, old_exp: str) -> None:
    """A run id made by two experiments must mean one run."""
    if old.settings() != run.settings():
        diff = _recipe_diff(old.recipe, run.recipe) or [
            k for k in run.settings() if old.settings()[k] != run.settings()[k]
        ]
        raise ConfigError(
            f"{where}: run id {run.run_id} is also made by experiment {old_exp} with "
            f"different settings ({', '.join(diff)}); give one of them a variant"
        )


def _check_families(grid: Grid, source: str, origin: dict) -> None:
    """Members of a family must agree on everything but their length."""
    for fam, members in grid.families.items():
        first = members[0]
        for other in members[1:]:
            diff = _recipe_diff(first.recipe, other.recipe)
            if diff:
                raise ConfigError(
                    f"{source}: runs {first.run_id} (experiment {origin[first.run_id]}) and {other.run_id} "
                    f"(experiment {origin[other.run_id]}) share family {fam} but differ in recipe "
                    f"{', '.join(diff)}; give one experiment a variant or share_trunk: false"
                )


def _check_nodes(config: dict, source: str, runs: Iterable[Run]) -> None:
    nodes = int(config.get("resources", {}).get("nodes", 1))
    for run in runs:
        gpus = run.recipe["gpus"]
        if nodes > 1 and gpus > 1 and gpus % nodes:
            raise ConfigError(
                f"{source}: resources.nodes: {nodes} nodes cannot share the {gpus} GPUs of run "
                f"{run.run_id} evenly (recipe.gpus)"
            )


def _check_seconds_per_iter(grid: Grid, source: str) -> None:
    for run in grid.runs.values():
        if grid.seconds_per_iter(run) is None and grid.config.get("seconds_per_iter"):
            raise ConfigError(
                f"{source}: seconds_per_iter: no entry for backbone {run.backbone}, norm {run.norm}, "
                f"gpus {run.recipe['gpus']} (needed by run {run.run_id})"
            )


def _merge_exps(old: Run, exp_name: str, test_aug: bool) -> Run:
    """The same run asked for by another experiment (which may add the TTA evaluation)."""
    d = {k: getattr(old, k) for k in Run.__dataclass_fields__}
    d["experiments"] = old.experiments + (exp_name,)
    d["test_aug"] = old.test_aug or test_aug
    return Run(**d)
