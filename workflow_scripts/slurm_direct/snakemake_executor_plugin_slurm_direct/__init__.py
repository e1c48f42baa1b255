"""Snakemake's SLURM executor (snakemake-executor-plugin-slurm, subclassed), whose batch job runs a
shell rule's command itself.

With the plain SLURM executor every job starts Snakemake twice on the compute node: the batch
script runs ``snakemake --executor slurm-jobstep``, which parses the Snakefile and runs ``srun ...
snakemake`` again for the job's one shell command. Each start imports Snakemake and its plugins and
parses the workflow (about 3 s on a 2-core machine, README: Campaign rehearsal). Here the batch
script is that ``srun`` line with the command itself:

    srun -n1 --cpu-bind=q --cpus-per-task=N [--gpus=G] --nodes=1 \
        bash -c 'trap : TERM USR1 USR2; export OMP_NUM_THREADS=N ...; set -euo pipefail; <command>'

(the srun options are the jobstep executor's own, so a job gets the same CPUs, GPUs, node and
signals: ``--signal`` still reaches the step; the trap keeps the shell alive, to exit with the
command's status, while the command handles the signal; the exports are what Snakemake's shell()
sets: the job's threads for OpenMP and BLAS, its tmpdir). What the Snakemake on the node did before the
command is done on the submitting host instead, just before sbatch, as Snakemake's local executor
does it (``job.prepare()``: the existing output removed, the output and log folders made, the
inputs waited for); after the job, the submitting Snakemake checks the outputs as before (with
``--latency-wait``). Everything else is the SLURM executor's: submission, status polling,
cancellation, the options (``--slurm-direct-<option>`` for ``--slurm-<option>``).

A job runs the plain way (Snakemake on the node) where the direct way would skip something Snakemake
does there: a rule without a ``shell:`` command (``script:``, ``run:``, wrappers), a group job, an
MPI job (an ``mpi`` resource), an array job (``--slurm-direct-array-jobs``), a benchmark or shadow
directive, a software deployment method (``--sdm conda`` / apptainer / env-modules), or
``--slurm-direct-plain``.

Status checks: the SLURM executor waits ``--slurm-direct-init-seconds-before-status-checks`` after
a check that saw a job end, and 10 s longer after each that saw none, up to 180 s.
``--slurm-direct-max-seconds-between-status-checks`` caps that wait. On a real campaign the growth
costs little (a segment runs for hours); in a rehearsal, whose jobs last seconds of wall time, each
second of waiting is ``compression`` seconds of simulated campaign: a 7 s job checked after 1 s and
then 11 s later starts its successor 12 s after it started (bench/bench_campaign.py, README).
"""

import re
import shlex
from dataclasses import dataclass, field

from snakemake.common.tbdstring import TBDString
from snakemake.shell import shell
from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm import ExecutorSettings as SlurmExecutorSettings
from snakemake_executor_plugin_slurm import common_settings  # noqa: F401  (the plugin interface reads it here)
from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor

# what Snakemake's shell() sets for a job's command (snakemake/shell.py): its threads, its tmpdir
THREAD_VARS = ("OMP_NUM_THREADS", "GOTO_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
THREAD_VARS += ("VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
TMP_VARS = ("TMPDIR", "TMP", "TEMPDIR", "TEMP")
SIGNALS = "TERM USR1 USR2"  # what SLURM sends a job before it ends it (`--signal`, pre-emption, walltime)


@dataclass
class ExecutorSettings(SlurmExecutorSettings):
    plain: bool = field(
        default=False,
        metadata={
            "help": "Run every job the plain way, through a Snakemake started on the node, instead of "
            "a shell rule's command in the batch job itself (srun ... bash -c <command>).",
            "env_var": False,
            "required": False,
        },
    )
    max_seconds_between_status_checks: int = field(
        default=180,
        metadata={
            "help": "The longest wait between two status checks: the SLURM executor waits 10 s longer "
            "after each check that saw no job end, up to this (its own cap: 180). A rehearsal, whose "
            "jobs last seconds, wants a few seconds.",
            "env_var": False,
            "required": False,
        },
    )


class Executor(SlurmExecutor):
    @property
    def next_seconds_between_status_checks(self):
        return RemoteExecutor.next_seconds_between_status_checks.fget(self)

    @next_seconds_between_status_checks.setter
    def next_seconds_between_status_checks(self, value):
        cap = self.workflow.executor_settings.max_seconds_between_status_checks
        RemoteExecutor.next_seconds_between_status_checks.fset(self, value if value is None else min(value, cap))

    def plain_reason(self, job):
        """Why `job` runs the plain way (Snakemake on the node), or None: it runs directly."""
        if self.workflow.executor_settings.plain:
            return "--slurm-direct-plain"
        if job.is_group():
            return "a group job"
        if not job.rule.shellcmd:
            return "no shell command"
        if "mpi" in job.resources.keys():  # its command starts its own tasks (the jobstep's rule)
            return "an MPI job"
        if job.name in self.array_jobs or "all" in self.array_jobs:
            return "an array job"
        if job.benchmark or job.rule.shadow_depth:
            return "a benchmark or shadow directive"
        if self.workflow.deployment_settings.deployment_method:
            return "a software deployment method"
        return None

    def run_job(self, job):
        if self.plain_reason(job) is None:
            # what the Snakemake on the node did (snakemake.executors.local does the same)
            self.workflow.async_run(job.prepare())
        super().run_job(job)

    @staticmethod
    def environment(job) -> str:
        """The variables Snakemake's shell() sets for a job's command, as an `export` (the thread
        counts decide how torch and BLAS split work, and so a result's last bits)."""
        env = {var: str(job.threads) for var in THREAD_VARS}
        tmpdir = job.resources.get("tmpdir")
        if tmpdir and not isinstance(tmpdir, TBDString):  # (unset: the node's own, as Snakemake's)
            env.update(dict.fromkeys(TMP_VARS, str(tmpdir)))
        return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())

    def format_job_exec(self, job) -> str:
        reason = self.plain_reason(job)
        if reason is not None:
            self.logger.debug(f"{job.name}: Snakemake on the node ({reason})")
            return super().format_job_exec(job)
        gpus = get_gpu_setting(job)  # the jobstep's reading of the gpu resources: "--gpus=N" or ""
        shell_exec = job.resources.get("shell_exec") or shell.get_executable() or "bash"
        # SLURM signals every process of the step (pre-emption, walltime, `--signal`); a shell that
        # died of it would end the step, and SLURM would kill the command while it writes its resume
        # checkpoint. With a trap the shell waits for the command, then exits with its status.
        command = f"trap : {SIGNALS}; {self.environment(job)}; " + shell._get_process_prefix(shell_exec) + job.shellcmd
        srun = " ".join(
            part
            for part in (
                "srun -n1 --cpu-bind=q",
                get_cpu_setting(job, bool(gpus)),
                gpus,
                get_node_setting(job),
                shlex.quote(shell_exec),
                "-c",
                shlex.quote(command),
            )
            if part
        )
        if self.workflow.executor_settings.pass_command_as_script:
            return srun  # the batch script's text, as it is
        # `sbatch --wrap="<this>"` through a shell: the SLURM executor escapes the double quotes,
        # backslashes, `$` and backquotes must reach the batch script unexpanded as well
        return re.sub(r"([\\$`])", r"\\\1", srun)
