# The one place that turns the config into the grid and plan, and holds every input function,
# path and wildcard constraint. Rules stay thin; logic lives in workflow_scripts/rethink.
import functools
import json
import os
import sys

SCRIPTS = os.path.join(str(workflow.basedir), "workflow_scripts")
sys.path.insert(0, SCRIPTS)

from rethink import campaign
from rethink import config as rconfig
from rethink import grid as rgrid
from rethink import paths as rpaths
from rethink.plan import Plan

# where the config came from, as errors name it: its files, and the keys given on the command line
_CLI_KEYS = sorted(k for k in workflow.config_settings.config if k != campaign.CONFIRM)
CONFIG_SOURCE = (", ".join(map(str, workflow.overwrite_configfiles)) or "config.yaml") + (
    f" (with --config {', '.join(_CLI_KEYS)})" if _CLI_KEYS else ""
)
# --config confirm_rerun=true: go ahead although the plan retrains finished work (rethink.campaign)
CONFIRM_RERUN = str(config.pop(campaign.CONFIRM, False)).lower() in ("true", "1", "yes")
try:
    for _f in workflow.overwrite_configfiles:  # what Snakemake's loader lets pass: keys given twice
        rconfig.read_yaml(_f)
    CFG = rconfig.validate(dict(config), CONFIG_SOURCE)
    GRID = rgrid.build(CFG, CONFIG_SOURCE)
except rconfig.ConfigError as e:
    raise WorkflowError(str(e)) from None
PLAN = Plan(GRID)
P = rpaths.Paths(CFG, PLAN, write_identities=workflow.is_main_process)

# Only what determines a result may redo a job: its identity files (rethink.identity), compared by
# modification time (profiles/default: rerun-triggers: mtime). Params, rule code and software
# environments are how a job runs, not what it makes.
P.write_identities()
if workflow.is_main_process:  # what a run would retrain, predicted from the files on disk (also in -n)
    _redo = campaign.predicted_segments(P)
    if _redo:
        print(campaign.warning(P, _redo)[0] + f"\n(a real run stops here unless run with --config {campaign.CONFIRM}=true)",
              file=sys.stderr)


def guard_finished_work(jobs):
    """Before any job of a real run: stop if the plan retrains finished work, unless confirmed."""
    segs = [PLAN.segment(j.wildcards.family, j.wildcards.line, int(j.wildcards.iter))
            for j in jobs if j.rule.name == "train_segment"]
    segs += [PLAN.final_segment(j.wildcards.run) for j in jobs if j.rule.name == "train_final"]
    redo = campaign.redone(P, segs)
    if not redo:
        return
    msg, _ = campaign.warning(P, redo)
    if set(map(str, workflow.rerun_triggers)) != {"mtime"}:
        msg += "\n(--rerun-triggers is not just mtime: Snakemake also redoes jobs whose params or code changed)"
    if not CONFIRM_RERUN:
        raise WorkflowError(f"{CONFIG_SOURCE}: {msg}\nNothing was run or deleted. To retrain, run again with "
                            f"--config {campaign.CONFIRM}=true; to keep the results, undo the edit.")
    print(f"{msg}\n(confirmed with {campaign.CONFIRM}=true)", file=sys.stderr)


def check_data_on_disk(jobs):
    """COCO/VOC inputs must exist before any job of a real run starts (a dry run, the grid
    summary and a rebuild from cached metrics never need them)."""
    todo = sorted({j.wildcards.data for j in jobs if j.rule.name == "prepare_data"})
    todo = [d for d in todo if CFG["datasets"][d]["kind"] != "synthetic"]
    if not todo:
        return
    from rethink.data import check_dataset_paths

    problems = [p for d in todo for p in check_dataset_paths(d, CFG["datasets"][d])]
    if problems:
        raise WorkflowError(f"{CONFIG_SOURCE}: datasets not found\n  " + "\n  ".join(problems))


onstart:
    needrun = list(workflow.dag.needrun_jobs())
    guard_finished_work(needrun)
    check_data_on_disk(needrun)
# The workflow's scripts run under the interpreter that runs Snakemake, or, with
# `--sdm conda`, under the rule's environment (envs/*.yaml).
_CONDA = "conda" in {str(getattr(m, "name", m)).lower() for m in workflow.deployment_settings.deployment_method}
PY = "python" if _CONDA else sys.executable


def env(name):
    """A rule's conda environment under --sdm conda; none otherwise (Snakemake then skips
    resolving an environment per job while it builds the DAG)."""
    return f"../envs/{name}.yaml" if _CONDA else None


wildcard_constraints:
    **rgrid.WILDCARD_CONSTRAINTS,


def final_targets():
    return P.final_targets()


def spec_json(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# Snakemake evaluates a job's params more than once while it builds the DAG: build each spec once.
@functools.lru_cache(maxsize=None)
def train_spec_json(family, line, it):
    return spec_json(P.train_spec(PLAN.segment(family, line, int(it))))


@functools.lru_cache(maxsize=None)
def final_spec_json(run_id):
    return spec_json(P.train_spec(PLAN.final_segment(run_id), output=P.model(run_id)))


@functools.lru_cache(maxsize=None)
def eval_spec_json(family, line, it, tta=False):
    ms = PLAN.tta_milestone(family, line, int(it)) if tta else PLAN.milestone(family, line, int(it))
    return spec_json(P.eval_spec(ms, tta))
