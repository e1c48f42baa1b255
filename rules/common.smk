# The one place that turns the config into the grid and plan, and holds every input function,
# path and wildcard constraint. Rules stay thin; logic lives in workflow_scripts/rethink.
import os
import sys

SCRIPTS = os.path.join(str(workflow.basedir), "workflow_scripts")
sys.path.insert(0, SCRIPTS)

from rethink import campaign
from rethink import config as rconfig
from rethink import grid as rgrid
from rethink import jobs as rjobs
from rethink import report_targets
from rethink import sources as rsources
from rethink.identity_files import IdentityFiles
from rethink.job_specs import JobSpecs
from rethink.paths import Paths
from rethink.plan import Plan
from rethink.resources import JobResources

# --config confirm_rerun=true: go ahead although the plan retrains finished work (rethink.campaign)
CONFIRM_RERUN = str(config.pop(campaign.CONFIRM, False)).lower() in ("true", "1", "yes")
# Every config file Snakemake read is read again by the workflow's reader (keys given twice, YTE
# templates), then validated; an error names the file, profile or command line that set the field,
# the field and the value, and stops here with the message alone (a WorkflowError would add a stack line).
try:
    validated_config, _grid, CONFIG_SOURCE = rsources.explained(
        config, workflow.config_settings.config, workflow.configfiles, workflow.basedir
    )
except rconfig.ConfigError as e:
    sys.exit(f"Error: {e}")
plan = Plan(_grid)  # the grid's runs as lines, training segments and milestones (rethink.plan)
paths = Paths(validated_config, plan)  # where every input, output and log lies
identities = IdentityFiles(paths, write=workflow.is_main_process)  # what decides when a result is redone
specs = JobSpecs(paths, identities)  # what each job is told: its input files here, its spec in its script
job_resources = JobResources(validated_config, plan)  # what each job asks the scheduler for, and its launcher
# every job reads its configuration from this file and names itself on its command line (rethink.jobs)
SNAPSHOT = rjobs.write_snapshot(validated_config, CONFIG_SOURCE, write=workflow.is_main_process)
PUBLISHED = os.path.join(str(workflow.basedir), "results", "paper", "published.csv")  # the paper's numbers

# Only what determines a result may redo a job: its identity files (rethink.identity), compared by
# modification time (profiles/default: rerun-triggers: mtime). Params, rule code and software
# environments are how a job runs, not what it makes.
identities.write_all()
if workflow.is_main_process:  # what a run would retrain, predicted from the files on disk (also in -n)
    _lost = identities.lost_metrics()
    if _lost:
        print(
            f"{paths.metrics_table}: {len(_lost)} metrics file(s) it was built from are gone "
            f"(first: {_lost[0]}); collect rebuilds the table and their evaluations are planned",
            file=sys.stderr,
        )
    _redo = campaign.predicted_segments(identities)
    if _redo:
        print(
            campaign.warning(identities, _redo)[0]
            + f"\n(a real run stops here unless run with --config {campaign.CONFIRM}=true)",
            file=sys.stderr,
        )


def stop_before_any_job(message):
    """End a real run before its first job with `message` alone on stderr and exit status 1 (a
    WorkflowError raised in onstart would add Snakemake's 'File ".../common.smk", line ...' lines,
    which read as a crash); as the config's errors above stop."""
    sys.exit(f"Error: {message}")


def guard_finished_work(jobs):
    """Before any job of a real run: stop if the plan retrains finished work, unless confirmed."""
    segs = [job_resources.segment_of(j.wildcards) for j in jobs if j.rule.name in ("train_segment", "train_final")]
    redo = campaign.redone(paths, segs)
    if not redo:
        return
    msg, _ = campaign.warning(identities, redo)
    lost = identities.lost_metrics()
    if lost:
        msg += (
            f"\n  {len(lost)} metrics file(s) of finished evaluations are gone (first: {lost[0]}):"
            " restoring them keeps the results"
        )
    if set(map(str, workflow.rerun_triggers)) != {"mtime"}:
        msg += "\n(--rerun-triggers is not just mtime: Snakemake also redoes jobs whose params or code changed)"
    if not CONFIRM_RERUN:
        stop_before_any_job(
            f"{CONFIG_SOURCE}: {msg}\nNothing was run or deleted. To retrain, run again with "
            f"--config {campaign.CONFIRM}=true; to keep the results, undo the edit."
        )
    print(f"{msg}\n(confirmed with {campaign.CONFIRM}=true)", file=sys.stderr)


def check_data_on_disk(jobs):
    """COCO/VOC inputs must exist before any job of a real run starts (a dry run, the grid
    summary and a rebuild from cached metrics never need them)."""
    todo = sorted({j.wildcards.data for j in jobs if j.rule.name == "prepare_data"})
    todo = [d for d in todo if validated_config["datasets"][d]["kind"] != "synthetic"]
    if not todo or validated_config.get("rehearsal"):  # a rehearsal reads no data (rethink.rehearsal)
        return
    from rethink.data import check_dataset_paths

    problems = [p for d in todo for p in check_dataset_paths(d, validated_config["datasets"][d])]
    if problems:
        stop_before_any_job(f"{CONFIG_SOURCE}: datasets not found\n  " + "\n  ".join(problems))


def check_gpus_here(jobs):
    """A local run (no cluster executor) whose training asks for GPUs needs that many CUDA devices
    on this machine; otherwise every rank would fail inside its job."""
    if not workflow.local_exec or validated_config.get("rehearsal"):  # a rehearsal simulates its GPUs on the CPU
        return
    train = [j for j in jobs if j.rule.name in ("train_segment", "train_final")]
    want = max((plan.run(job_resources.segment_of(j.wildcards).owner).recipe["gpus"] for j in train), default=0)
    if not want:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < want:
        stop_before_any_job(
            f"{CONFIG_SOURCE}: recipe.gpus: value {want}: this local run's training asks for {want} GPU(s), "
            f"but this machine has {have} CUDA device(s); run on the cluster (--profile slurm) or set "
            f"recipe.gpus: 0 for a CPU run. Nothing was run."
        )


onstart:
    needrun = list(workflow.dag.needrun_jobs())
    guard_finished_work(needrun)
    check_data_on_disk(needrun)
    check_gpus_here(needrun)


def stop_warm_interpreter():
    """The warm interpreter (warm_interpreter: workflow_scripts/warm.py) ends with the workflow."""
    if validated_config.get("warm_interpreter") and not _CONDA:
        import warm

        warm.stop()


def write_ledger():
    """<results>/campaign/jobs.csv and timeline.png from the jobs' ledger rows (rethink.ledger),
    whenever the workflow ends; a ledger that cannot be drawn costs the workflow nothing."""
    if workflow.is_main_process and not workflow.dryrun:
        try:
            from rethink.timeline import write_campaign

            write_campaign(paths.results)
        except Exception as e:  # noqa: BLE001  (the ledger is a record, never a reason to fail)
            print(f"ledger: could not write {paths.results}/campaign: {e}", file=sys.stderr)


onsuccess:
    stop_warm_interpreter()
    write_ledger()


onerror:
    stop_warm_interpreter()
    write_ledger()


# The workflow's scripts run under the interpreter that runs Snakemake, or, with
# `--sdm conda`, under the rule's environment (envs/*.yaml).
_CONDA = "conda" in {str(getattr(m, "name", m)).lower() for m in workflow.deployment_settings.deployment_method}
PY = "python" if _CONDA else sys.executable


def script(name):
    """A script of workflow_scripts/ (a param, not an input: a newer checkout redoes nothing)."""
    return os.path.join(SCRIPTS, name)


wildcard_constraints:
    **rgrid.WILDCARD_CONSTRAINTS,


def final_targets():
    return report_targets.final_targets(paths)


def job(rule):
    """A job's name on its command line (rethink.jobs.key): its script reads the rest of its spec
    from the config snapshot."""
    return rjobs.key_pattern(rule)
