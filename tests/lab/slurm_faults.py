"""The faults of a shared cluster, each as SLURM itself does it: the methods of
tests/lab/slurm_cluster.py's SlurmCluster that tests/test_slurm_faults.py injects into a campaign.

Pre-emption needs a cluster started with ``preemption=True`` (a higher-tier partition on the same
nodes, PreemptType=preempt/partition_prio, PreemptMode=REQUEUE); node faults name a node of
``cluster.nodes``. A requeued or pre-empted job waits CRED_EXPIRE + 1 s before it starts again.
"""

from __future__ import annotations

import signal
import subprocess


class Faults:
    """Mixed into SlurmCluster (it provides run, job_info, procs, _spawn, _wait, conf, ...)."""

    def jobs(self) -> list[dict[str, str]]:
        """Jobs in the queue (any state squeue still shows): id, state, comment, node, partition, and
        seconds, its run time (an empty list while the controller is down)."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i|%T|%k|%N|%P|%M", check=False, timeout=60).stdout
        keys = ("id", "state", "comment", "node", "partition", "time")
        jobs = [dict(zip(keys, ln.split("|"))) for ln in out.splitlines() if ln.count("|") == 5]
        for j in jobs:
            days, _, hms = j["time"].rpartition("-")
            parts = [int(x) for x in hms.split(":") if x.isdigit()]
            j["seconds"] = int(days or 0) * 86400 + sum(v * 60**i for i, v in enumerate(reversed(parts)))
        return jobs

    def running(self, comment: str = "") -> list[dict[str, str]]:
        """Running jobs whose comment (the plugin's ``rule_<rule>_wildcards_<...>``) contains `comment`."""
        return [j for j in self.jobs() if j["state"] == "RUNNING" and comment in j["comment"]]

    def requeue(self, job_id) -> None:
        """``scontrol requeue``: the job's processes get SIGTERM (then SIGKILL after KillWait) and it
        queues again under the same id (held CRED_EXPIRE + 1 s), as an administrator's requeue."""
        self.run("scontrol", "requeue", str(job_id))

    def preempt(self, node: str, seconds: int = 10) -> str:
        """A job of the higher-tier partition (cluster started with preemption=True) that needs all of
        `node`'s GPUs: SLURM preempts (PreemptMode=REQUEUE) what runs there. Returns its job id."""
        if not self.preemption:
            raise RuntimeError("preempt(): start the cluster with preemption=True")
        return self.run(
            "sbatch",
            "--parsable",
            "-p",
            self.urgent,
            "-w",
            node,
            f"--gres=gpu:{self.n_gpus}",
            "-c",
            "1",
            "--mem",
            "100",
            "-t",
            "5",
            "-o",
            "/dev/null",
            "--wrap",
            f"sleep {int(seconds)}",
        ).stdout.strip()

    def node_down(self, node: str, reason: str = "fault injected") -> None:
        """The node fails: SLURM kills its jobs and requeues them (JobRequeue, the default); it stays
        out of service (drained: its slurmd answers, so ReturnToService=2 would take it back at
        once) until node_up()."""
        self.run("scontrol", "update", f"nodename={node}", "state=down", f"reason={reason}")
        self.run("scontrol", "update", f"nodename={node}", "state=drain", f"reason={reason}", check=False)

    def node_up(self, node: str) -> None:
        self.run("scontrol", "update", f"nodename={node}", "state=resume", check=False)

    def shorten_walltime(self, job_id, minutes_left: int = 1) -> str:
        """A walltime estimate that was too short: the running job's limit becomes its run time +
        `minutes_left` (whole minutes, as SLURM counts), so SLURM signals it (--signal) and then ends
        it as TIMEOUT. Returns the new limit."""
        run = self.job_info(job_id).get("RunTime", "00:00:00")
        h, m, sec = (int(x) for x in run.split("-")[-1].split(":"))
        limit = h * 60 + m + (sec > 0) + int(minutes_left)
        self.run("scontrol", "update", f"jobid={job_id}", f"TimeLimit={limit}")
        return str(limit)

    def stop_controller(self) -> None:
        """slurmctld ends (SIGTERM: it saves its state); sbatch, squeue and srun fail meanwhile."""
        p = self.procs.get("slurmctld")
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=60)

    def start_controller(self) -> None:
        """slurmctld again, from its saved state (no -c): running jobs and the queue survive."""
        self._spawn("slurmctld", [self.slurmctld_binary, "-D", "-f", str(self.conf)])
        self._wait("slurmctld back (scontrol ping)", lambda: "UP" in self.run("scontrol", "ping", check=False).stdout)

    @staticmethod
    def kill9(proc: subprocess.Popen) -> None:
        """SIGKILL to a process the caller started (Snakemake on the login node dying); its SLURM jobs run on."""
        proc.kill()
        proc.wait(timeout=30)
