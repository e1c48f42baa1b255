"""Rehearsal: the whole campaign through its real rules, with the arithmetic simulated.

Switch it on with ``--config rehearsal=true``, or in a config file::

    rehearsal: {compression: 3600, request: real, diverge: {<family>: <iteration>}, slow: {<family>: <factor>}}

Every job of the grid then runs through its real rule, resources request, segment chain, the one
training loop (rethink.loop: its checkpoints, resume, SIGTERM and divergence paths), its milestone
evaluations, collect, tables, figures, claims and report. What is simulated, and how:

* **Training** (engines/rehearsal_engine.py): the model is a tiny parameter set, each iteration
  sleeps ``seconds_per_iter / compression`` (``seconds_per_iter``: the config's entry for the run,
  rethink.resources.seconds_per_iter) and the losses are the documented function
  :func:`losses_at`. One process on the CPU, whatever ``recipe.gpus`` says; one step of the loop
  stands for :func:`stride` iterations.
* **Evaluation** (:func:`evaluation`): no predictions; it sleeps the evaluation's predicted time
  (rethink.evalcost, from ``eval_seconds``) / compression and writes the real metrics JSON with
  ``"rehearsal": true``, its AP values from :func:`simulated_stats` (a function of the paper's
  published numbers and the iteration, never a measurement).
* **Data and inits** (:func:`prepare_data`, :func:`init_weights`): no image is read and no
  weight downloaded: a manifest and a weights file marked as the rehearsal's.

Rehearsal outputs live apart: ``<workdir>/rehearsal`` and ``<results>/rehearsal`` (config.validate
moves both), every identity file holds the rehearsal settings (rethink.identity_files), every checkpoint
names the engine ``rehearsal`` and every metrics JSON says ``"rehearsal": true``; a real evaluation
refuses a rehearsal checkpoint, collect refuses a metrics file of the other kind, and every table,
figure, claims row and report category says REHEARSAL.

``compression`` (default 3600: a simulated hour per second) divides every simulated duration: the
training steps, the evaluations and the walltimes the jobs ask for (rethink.resources). ``request``:
``real`` (default) asks the scheduler for the run's real GPUs, CPUs and memory, which checks a
site's partition, account and GPU request; ``cpu`` asks for no GPU (a cluster without GPUs, or a
test cluster). ``diverge``: the loss of the named family's training turns non-finite at that
iteration, to rehearse a diverging run. ``slow``: the named family trains that many times slower
than its ``seconds_per_iter`` while its walltimes stay as computed from it, to rehearse an estimate
that is too short (a walltime hit); it changes no result, so no identity.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

from .metrics import STAT_NAMES

FOLDER = "rehearsal"  # under the config's workdir and results
DEFAULTS = {"compression": 3600.0, "request": "real", "diverge": {}, "slow": {}}
LABEL = "REHEARSAL (simulated, not measured)"
ENGINE = "rehearsal"
WEIGHTS_FORMAT = "rethink-rehearsal-weights/1"
PUBLISHED = Path(__file__).resolve().parents[2] / "results" / "paper" / "published.csv"


# ---------------------------------------------------------------------------- the switch
def normalize(cfg: dict) -> None:
    """In place, after the schema check (rethink.config.validate): ``rehearsal`` true or a mapping
    becomes the full mapping (DEFAULTS filled in) with ``of`` (the real workdir and results), and
    workdir and results move to their ``rehearsal`` subfolders; false or absent: no key.
    Idempotent: a normalized config (a snapshot's) is left as it is."""
    value = cfg.get("rehearsal")
    if value is None or value is False:
        cfg.pop("rehearsal", None)
        return
    value = {} if value is True else dict(value)
    if "of" in value:
        cfg["rehearsal"] = value
        return
    out = {**DEFAULTS, **value}
    out["compression"] = float(out["compression"])
    out["diverge"] = {str(k): int(v) for k, v in (out.get("diverge") or {}).items()}
    out["slow"] = {str(k): float(v) for k, v in (out.get("slow") or {}).items()}
    out["of"] = {k: cfg[k] for k in ("workdir", "results")}
    for k in ("workdir", "results"):
        cfg[k] = f"{cfg[k].rstrip('/')}/{FOLDER}"
    cfg["rehearsal"] = out


def settings(cfg: dict) -> dict | None:
    """The normalized rehearsal settings of a validated config, or None (a real campaign)."""
    return cfg.get("rehearsal") or None


def identity(cfg: dict, content: dict, family: str | None = None) -> dict:
    """An identity file's content (rethink.identity_files), in a rehearsal with "rehearsal": the flag, the
    compression and, for a family's lines, where it diverges; so no rehearsal result passes for a
    real one. A real config's identities are unchanged."""
    rh = settings(cfg)
    if rh is None:
        return content
    part = {"rehearsal": True, "compression": rh["compression"]}
    if family is not None and family in rh.get("diverge", {}):
        part["diverge_at"] = rh["diverge"][family]
    return {**content, "rehearsal": part}


def spec(cfg: dict, **values) -> dict:
    """A rehearsal job's spec part {"rehearsal": {compression, each of `values` called}} ({} in a
    real campaign, whose specs stay as they were; the values are functions, called only here)."""
    rh = settings(cfg)
    return (
        {} if rh is None else {"rehearsal": {"compression": rh["compression"], **{k: f() for k, f in values.items()}}}
    )


def training(cfg: dict, seg, recipe: dict, seconds_per_iter: float) -> tuple[dict, int]:
    """(the rehearsal part of a training segment's run settings, its log period): the simulated
    seconds per iteration (the config's seconds_per_iter) and GPUs, the stride, and for a family
    that config rehearsal.diverge / .slow names where its loss turns non-finite / how many times
    slower it trains than its estimate. The log period gives at most 10 lines per segment."""
    rh = settings(cfg)
    out = {"compression": rh["compression"], "seconds_per_iter": seconds_per_iter, "gpus": int(recipe["gpus"])}
    if seg.family in rh.get("diverge", {}):
        out["diverge_at"] = rh["diverge"][seg.family]
    if seg.family in rh.get("slow", {}):
        out["slow"] = rh["slow"][seg.family]
    out["stride"] = stride(
        seg.start, seg.end, recipe["checkpoint_period"], seconds_per_iter * out.get("slow", 1.0), rh["compression"]
    )
    return out, out["stride"] * max(1, seg.iterations // out["stride"] // 10)


def banner(rh: dict) -> str:
    """The line every rehearsal job prints first."""
    return (
        f"{LABEL}: compression {rh['compression']:g} (simulated seconds / wall seconds); "
        "no result of this job is a measurement"
    )


def in_table(df) -> bool:
    """Whether a metrics table (rethink.collect) holds rehearsal rows."""
    return "rehearsal" in getattr(df, "columns", ()) and bool(
        df["rehearsal"].astype(str).str.lower().isin(["true", "1"]).any()
    )


# ---------------------------------------------------------------------------- pacing and losses
MAX_STEP_SECONDS = 2.0  # a loop step of the rehearsal sleeps at most this long (a stop signal waits for it)


def stride(start: int, end: int, checkpoint_period: int, seconds_per_iter: float, compression: float) -> int:
    """Simulated iterations per step of the loop: the largest divisor of gcd(start, end,
    checkpoint_period) whose step sleeps at most MAX_STEP_SECONDS. Every resume checkpoint, LR
    boundary (segments end at the drops) and the segment's end falls on a step's end, and the
    loop's per-step cost (its hooks, a few hundred microseconds) is paid once per stride, not per
    iteration: a 20k-iteration segment of config.yaml is 4 steps, not 20,000."""
    g = math.gcd(math.gcd(int(start), int(end)), int(checkpoint_period)) or 1
    fits = max(1, int(MAX_STEP_SECONDS * compression / max(seconds_per_iter, 1e-12)))
    divisors = {d for k in range(1, math.isqrt(g) + 1) if g % k == 0 for d in (k, g // k)}
    return max(d for d in divisors if d <= fits)


def losses_at(iteration: int, iters_per_x: int) -> dict[str, float]:
    """The simulated loss terms at `iteration` (besides the parameter term the engine adds):

        loss_cls  = 0.3 + 0.7 * exp(-iteration / iters_per_x)
        loss_box  = 0.2 + 0.5 * exp(-2 * iteration / iters_per_x)

    finite, positive and decreasing with training."""
    u = iteration / max(iters_per_x, 1)
    return {"loss_cls": 0.3 + 0.7 * math.exp(-u), "loss_box": 0.2 + 0.5 * math.exp(-2 * u)}


# ---------------------------------------------------------------------------- simulated AP
FALLBACK = {"bbox": 40.0, "segm": 35.0, "keypoints": 64.0, "voc": 80.0}  # a setting the paper has no number of
RATIO = {
    "AP50": 1.55,
    "AP75": 1.08,
    "APs": 0.55,
    "APm": 1.08,
    "APl": 1.3,
    "AR1": 0.8,
    "AR10": 1.25,
    "AR100": 1.32,
    "ARs": 0.8,
    "ARm": 1.4,
    "ARl": 1.6,
    "AR": 1.1,
    "AR50": 1.3,
    "AR75": 1.15,
}
TAU_X = {"random": 1.5, "pretrained": 0.5}  # curve time constant, in multiples of iters_per_x
TRUNK_FACTOR = 0.85  # before any LR drop the paper's curves sit ~15% below their schedule's end


def _published(path=PUBLISHED) -> list[dict]:
    from .published import DATA_ALIASES, METRIC_ALIASES  # the names as rethink.published normalises them

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["data"] = DATA_ALIASES.get(r["data"], r["data"])
        r["metric"] = METRIC_ALIASES.get(r["metric"], r["metric"])
    return rows


def paper_value(rows: list[dict], run: dict, metric: str, schedule: str | None) -> float | None:
    """The paper's number for the run's setting (task, backbone, norm, init, data) and `metric`: at
    `schedule` where the paper has it, else at its longest schedule of that setting; None if the
    paper has no number for the setting."""
    want = {"task": run["recipe"]["task"], **{k: str(run[k]) for k in ("backbone", "norm", "init", "data")}}
    same = [r for r in rows if r["metric"] == metric and all(r[k] == v for k, v in want.items())]
    if not same:
        return None
    exact = [r for r in same if r["schedule"] == schedule]
    pick = exact[0] if exact else max(same, key=lambda r: float(r["iterations"] or 0))
    return float(pick["value"])


def simulated_stats(run: dict, iteration: int, trunk: bool, iou_types, rows=None) -> dict:
    """Simulated COCO stats (percent) of a checkpoint at `iteration`, per iou type:

        AP(i) = P * s(i) / s(N)   on a schedule's tail (N: the schedule's iterations; AP(N) = P)
        AP(i) = 0.85 * P * s(i)   on the trunk (constant LR, before any drop)
        s(i)  = 1 - exp(-i / (tau * iters_per_x)),  tau = 1.5 for random init, 0.5 pre-trained

    P is the paper's published number of that type's AP (results/paper/published.csv) for the run's
    setting at its schedule (paper_value), else FALLBACK; every other stat is AP x RATIO (capped
    at 100). VOC runs get voc AP50 the same way."""
    rows = _published() if rows is None else rows
    recipe = run["recipe"]
    tau = TAU_X["random" if run.get("init_kind") == "random" else "pretrained"] * int(recipe["iters_per_x"])
    s = 1.0 - math.exp(-iteration / tau)
    end = int(run.get("iterations") or iteration or 1)
    schedule = None if trunk else run.get("schedule")
    out = {}
    types = list(iou_types) + (["voc"] if run["data"].startswith("voc") else [])
    for t in types:
        metric = "voc_AP50" if t == "voc" else f"{t}_AP"
        p = paper_value(rows, run, metric, schedule)
        p = FALLBACK[t] if p is None else p
        ap = TRUNK_FACTOR * p * s if trunk else p * s / max(1.0 - math.exp(-end / tau), 1e-9)
        out[t] = {n: ap if n == "AP" or t == "voc" else min(100.0, ap * RATIO[n]) for n in STAT_NAMES[t]}
    return out


# ---------------------------------------------------------------------------- simulated jobs
def evaluation(spec: dict, iou_types, log) -> tuple[dict, dict, float]:
    """The evaluate job of a rehearsal (rethink.evaluate.evaluate calls it): reads the rehearsal
    checkpoint, sleeps the predicted evaluation time / compression, returns (checkpoint metadata
    with the simulated training cost, simulated stats of `iou_types`, simulated evaluation seconds)."""
    from . import checkpoint

    rh = spec["rehearsal"]
    print(banner(rh), file=log, flush=True)
    meta = checkpoint.metadata(checkpoint.load(spec["checkpoint"]))
    if meta.get("engine") != ENGINE:
        raise checkpoint.CheckpointError(
            f"{spec['checkpoint']}: not a rehearsal checkpoint (engine {meta.get('engine')!r}); "
            "a rehearsal evaluates only what the rehearsal trained"
        )
    seconds = float(rh["eval_seconds"])
    time.sleep(seconds / rh["compression"])
    run = spec["run"]
    trained = float(meta["iteration"]) * float(rh["seconds_per_iter"])  # simulated training seconds
    meta.update(wall_seconds=trained, device_seconds=trained * max(int(rh["gpus"]), 1), gpus=int(rh["gpus"]))
    stats = (
        {} if meta.get("diverged") else simulated_stats(run, int(spec["iteration"]), bool(rh.get("trunk")), iou_types)
    )
    print(
        f"simulated evaluation: {seconds:.0f} s at full scale, slept {seconds / rh['compression']:.3f} s; "
        f"AP from rethink.rehearsal.simulated_stats",
        file=log,
        flush=True,
    )
    return meta, stats, seconds


def prepare_data(spec: dict) -> dict:
    """A rehearsal dataset manifest (rethink.data.prepare calls it): the dataset's sizes, no image
    read or written; its file paths name nothing."""
    from .atomic import write_json_atomic

    rh = spec["rehearsal"]
    print(banner(rh), flush=True)
    kind = spec.get("kind")
    if kind in ("classification", "pretrain"):
        m = {
            "kind": "classification",
            "images_file": "rehearsal-no-images",
            "num_images": int(spec.get("train_size", 1)),
            "classes": int(spec.get("classes", 1)),
        }
    else:
        train = {"synthetic": spec.get("train_size"), "coco": spec.get("num_images") or 118287, "voc": 16551}.get(kind)
        m = {
            "kind": "coco",
            "source_kind": kind,
            "categories": [],
            "train": {"images": "rehearsal-no-images", "annotations": "rehearsal-no-annotations"},
            "val": {"images": "rehearsal-no-images", "annotations": "rehearsal-no-annotations"},
            "num_train_images": int(train or 1),
            "num_val_images": int(rh.get("val_images") or 1),
            "keypoints": bool(spec.get("keypoints", False)),
            "masks": kind != "voc",
        }
    m.update(name=spec["name"], rehearsal=True)
    Path(spec["output"]).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec["output"], m, indent=1, sort_keys=True)
    return m


def init_weights(spec: dict) -> dict:
    """The pretrain / stage_weights job of a rehearsal: a weights file only the rehearsal engine
    reads (JSON, so no real engine loads it) and the init's cost record (the config's, or the
    pre-training's iterations x batch). Returns the cost record."""
    from .atomic import write_json_atomic

    rh = spec["rehearsal"]
    print(banner(rh), flush=True)
    write_json_atomic(
        spec["output"],
        {
            "format": WEIGHTS_FORMAT,
            "rehearsal": True,
            "init": spec["init"],
            "backbone": spec["backbone"],
            "norm": spec["norm"],
        },
        indent=1,
    )
    if "iterations" in spec:  # a pre-training
        n = int(spec["iterations"]) * int(spec["batch"])
        cost = {
            "iterations": int(spec["iterations"]),
            "images": n,
            "instances": n,
            "pixels": n * int(spec.get("image_size", 1)) ** 2,
        }
    else:
        record = spec.get("cost_record") or {}
        cost = {k: record.get(k) for k in ("iterations", "images", "instances", "pixels")}
    cost["rehearsal"] = True
    if spec.get("cost"):
        write_json_atomic(spec["cost"], cost, indent=1, sort_keys=True)
    return cost


def read_weights(path: str) -> dict:
    """A rehearsal weights file (init_weights); ValueError naming the file for anything else."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(
            f"{path}: not rehearsal weights ({type(e).__name__}); a rehearsal never loads real weights"
        ) from None
    if not isinstance(rec, dict) or rec.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path}: not rehearsal weights (no format {WEIGHTS_FORMAT!r})")
    return rec
