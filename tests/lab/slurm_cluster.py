# over 400 lines: one class, the private SLURM cluster: its daemons, slurm.conf template and fault controls
"""A real, private SLURM cluster for tests, and the faults of a shared one (tests/lab/slurm_faults.py).

``SlurmCluster`` starts munged, slurmctld and slurmd on this machine, with every
port, key, socket, state directory, pid file and log file inside one temporary
directory, and stops exactly the processes it started (by PID) again, with what
its daemons left running once they are gone (job steps whose slurmd or controller
was stopped under them: every process whose environment names this slurm.conf).

Nodes: by default this machine is one node. With ``nodes=N`` it is N nodes rn1..rnN,
each its own slurmd (``slurmd -N rn<i>``, its own port) on this one host: Debian's
SLURM 22.05 build allows several slurmd per host (checked: 3 nodes schedule, drain and
requeue independently), each advertising 8 CPUs (SlurmdParameters=config_overrides).
``preemption=True`` adds a higher-tier partition on the same nodes whose jobs pre-empt
ours (PreemptMode=REQUEUE).

Nothing system-wide is changed: munged runs on a private socket with a private
key (``AuthInfo=socket=...`` in slurm.conf points every SLURM command at it), and
the controller listens on free private ports, so two test sessions, or a real
SLURM installation, can coexist on one machine.

Fake GPUs: each node advertises ``Gres=gpu:2`` (``gpus_per_node``) backed by dummy
device files, so ``--gres=gpu:1`` / ``--gpus=1`` requests are really scheduled and accounted.

Usage in tests (the session-scoped fixture; tests/conftest.py imports it for every test)::

    def test_x(slurm_cluster):
        subprocess.run(["sbatch", "--wrap", "true"], env=slurm_cluster.env)

or, outside pytest::

    with SlurmCluster() as cluster:
        print(cluster.env["SLURM_CONF"], cluster.logs)

If SLURM or munge are missing (and cannot be installed with .ci/slurm.sh), or the
process is not root, ``skip_reason()`` says why and the fixture calls
``pytest.skip`` with that message.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .slurm_faults import Faults

REPO = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO / ".ci" / "slurm.sh"
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
CLUSTER_NAME = "rethink-test"
PARTITION = "debug"
CLIENTS = ("srun", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "sacct", "sstat", "salloc", "sacctmgr", "sshare")
N_GPUS = 2
FAKE_CPUS = 8
CRED_EXPIRE = 10  # s; SLURM holds a requeued job for this + 1 s before it may start again (default 120)
# Snakemake's status polling in the lab: the profile's suits hours-long jobs (first check after 40 s,
# then 10 s longer after each check that saw no job end, up to 180 s); jobs here last seconds, so
# every second, and never longer (slurm-direct's cap: without it a 7 s job is seen done after 12 s)
FAST_POLL = [
    "--seconds-between-status-checks",
    "1",
    "--slurm-direct-init-seconds-before-status-checks",
    "1",
    "--slurm-direct-max-seconds-between-status-checks",
    "1",
    "--max-status-checks-per-second",
    "1",
    "--latency-wait",
    "5",
]
URGENT = "urgent"  # the higher-priority partition of a cluster with preemption


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def _missing() -> list[str]:
    return [b for b in NEEDED if _which(b) is None]


def skip_reason(install: bool = True) -> str | None:
    """Why a real cluster cannot be started here (None when it can).

    With ``install=True`` and root, missing packages are installed first with
    .ci/slurm.sh (apt-get); set RETHINK_SLURM_NO_INSTALL=1 to forbid that.
    """
    if os.name != "posix":
        return "SLURM tests need Linux"
    if os.geteuid() != 0:
        return (
            "SLURM tests need root (they start munged as the munge user and "
            "slurmd as root); run pytest as root or in the CI container"
        )
    if _missing() and install and not os.environ.get("RETHINK_SLURM_NO_INSTALL"):
        try:
            subprocess.run(
                ["bash", str(INSTALL_SCRIPT)],
                check=True,
                timeout=900,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        except (subprocess.SubprocessError, OSError) as e:
            out = getattr(e, "stdout", "") or ""
            return f"SLURM packages missing and {INSTALL_SCRIPT} failed: {e}\n{out[-2000:]}"
    missing = _missing()
    if missing:
        return f"SLURM/munge binaries not found: {', '.join(missing)} (install with: sudo bash .ci/slurm.sh)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user on this machine (the munge package creates it)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line(real_memory_fraction: float = 0.8) -> tuple[str, str, int]:
    """(node name, NodeName=... line, RealMemory) from ``slurmd -C``."""
    out = subprocess.run([_which("slurmd"), "-C"], check=True, capture_output=True, text=True, timeout=30).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("NodeName="))
    name = line.split()[0].split("=", 1)[1]
    m = re.search(r"RealMemory=(\d+)", line)
    detected = int(m.group(1)) if m else 2048
    mem = max(256, int(detected * real_memory_fraction))
    line = re.sub(r"RealMemory=\d+", f"RealMemory={mem}", line)
    if "RealMemory=" not in line:
        line += f" RealMemory={mem}"
    return name, line, mem


class SlurmCluster(Faults):
    """Start/stop a private SLURM cluster (root only); the faults it can inject: tests/lab/slurm_faults.py.

    Attributes after ``start()``:
      root       temp dir holding everything
      conf       path of slurm.conf
      env        os.environ copy with SLURM_CONF set and client wrappers on PATH
                 (pass to subprocesses); job_env() adds this venv to PATH
      bindir     folder of the client wrappers (sbatch, squeue, srun, ...)
      logs       dict name -> log path (munged, slurmctld, slurmd)
      node, partition, n_gpus
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        min_job_age: int = 600,
        def_mem_per_cpu: int = 512,
        start_timeout: float = 60.0,
        nodes: int = 1,
        gpus_per_node: int = N_GPUS,
        preemption: bool = False,
    ):
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="rethink-slurm-"))
        self.min_job_age = min_job_age
        self.def_mem_per_cpu = def_mem_per_cpu
        self.start_timeout = start_timeout
        self.partition = PARTITION
        self.n_gpus = gpus_per_node
        self.n_nodes = int(nodes)
        self.preemption = preemption
        self.nodes: list[str] = []
        self.urgent = URGENT
        self.procs: dict[str, subprocess.Popen] = {}
        self.munge_dir: Path | None = None
        self._log_handles = []
        self.conf = self.root / "etc" / "slurm.conf"
        self.logs = {
            "munged": self.root / "log" / "munged.stdout",
            "slurmctld": self.root / "log" / "slurmctld.log",
            "slurmd": self.root / "log" / "slurmd.log",
        }
        self.env = dict(os.environ)

    # ----------------------------------------------------------------- config
    def _write_files(self):
        r = self.root
        for d in ("etc", "log", "state", "spool", "run", "dev"):
            (r / d).mkdir(parents=True, exist_ok=True)
        self._write_munge_key()
        self._make_fake_gpus()
        self.node, node_line, self.real_memory = _node_line()
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()
        gres_range = f"{r}/dev/fakegpu[0-{self.n_gpus - 1}]"
        node_lines, gres_lines = self._node_lines(node_line, gres_range)
        for n in self.nodes:
            (r / "spool" / n).mkdir(exist_ok=True)
        partitions = (
            f"PartitionName={self.partition} Nodes={','.join(self.nodes)} Default=YES MaxTime=INFINITE State=UP"
        )
        if self.preemption:  # a higher tier on the same nodes: its jobs requeue ours (PreemptMode=REQUEUE)
            partitions += (
                f" PriorityTier=1\nPartitionName={URGENT} Nodes={','.join(self.nodes)} MaxTime=INFINITE "
                "State=UP PriorityTier=10 PreemptMode=OFF"
            )
            node_lines = f"PreemptType=preempt/partition_prio\nPreemptMode=REQUEUE\n{node_lines}"
        self.conf.write_text(self._slurm_conf(node_lines, partitions))
        (self.conf.parent / "gres.conf").write_text("AutoDetect=off\n" + gres_lines)
        # an empty cgroup.conf silences warnings on some builds
        (self.conf.parent / "cgroup.conf").write_text("")
        self._write_client_wrappers()

    def _write_munge_key(self) -> None:
        """munge: private key, socket, pid, seed, log; all owned by munge."""
        munge = pwd.getpwnam("munge")
        # munged (running as user munge) must reach its folder; pytest's tmp dirs are
        # 0700 root, so it gets its own folder in the system temp dir.
        mdir = self.munge_dir = Path(tempfile.mkdtemp(prefix="rethink-munge-"))
        key = mdir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        for p in (mdir, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        os.chmod(mdir, 0o755)
        os.chmod(key, 0o600)
        self.munge_socket = mdir / "munge.socket.2"

    def _make_fake_gpus(self) -> None:
        # Fake GPU devices for gres.conf (AutoDetect=off): character devices with
        # /dev/null's numbers, so slurmd accepts them as devices and sets
        # CUDA_VISIBLE_DEVICES; plain files where mknod is not allowed (then GPUs
        # are still scheduled, only the env variable stays empty).
        for i in range(self.n_gpus):
            f = self.root / "dev" / f"fakegpu{i}"
            if not f.exists():
                try:
                    os.mknod(f, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
                except OSError:
                    f.touch()

    def _slurm_conf(self, node_lines: str, partitions: str) -> str:
        r = self.root
        return f"""\
# Generated by tests/lab/slurm_cluster.py: private test cluster.
ClusterName={CLUSTER_NAME}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire={CRED_EXPIRE}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={self.logs["slurmctld"]}
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={self.def_mem_per_cpu}
GresTypes=gpu
MailProg=/bin/true
# squeue must still list finished jobs: the snakemake plugin polls with squeue.
MinJobAge={self.min_job_age}
ReturnToService=2
SlurmdTimeout=300
SlurmdParameters=config_overrides
KillWait=5
InactiveLimit=0
Waittime=0
MessageTimeout=30
SchedulerParameters=sched_interval=2,bf_interval=2
{node_lines}
{partitions}
"""

    def _write_client_wrappers(self) -> None:
        # Client wrappers that pin SLURM_CONF. Needed because the slurm-jobstep
        # executor strips SLURM_* variables (SLURM_CONF included) before its
        # inner `srun`; on a real cluster srun finds /etc/slurm/slurm.conf, here
        # it finds this wrapper first on PATH (PATH is exported into jobs).
        bindir = self.root / "bin"
        bindir.mkdir(exist_ok=True)
        for tool in CLIENTS:
            real = _which(tool)
            if real is None:
                continue
            w = bindir / tool
            w.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {real} "$@"\n')
            w.chmod(0o755)
        self.bindir = bindir
        self.env = dict(os.environ)
        self.env["SLURM_CONF"] = str(self.conf)
        self.env["PATH"] = f"{bindir}{os.pathsep}{self.env.get('PATH', '')}"
        # client commands must not inherit settings of an enclosing job
        for k in list(self.env):
            if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_")) and k != "SLURM_CONF":
                del self.env[k]

    def _node_lines(self, node_line: str, gres_range: str) -> tuple[str, str]:
        """slurm.conf node lines and gres.conf lines: this machine as one node, or with nodes > 1
        that many nodes rn1..rnN on this host, each its own slurmd on its own port (SLURM built
        with --enable-multiple-slurmd, as Debian's is), advertising FAKE_CPUS CPUs
        (SlurmdParameters=config_overrides)."""
        if self.n_nodes == 1:
            self.nodes = [self.node]
            self.slurmd_ports = {self.node: self.slurmd_port}
            lines = f"{node_line} Gres=gpu:{self.n_gpus} State=UNKNOWN"
        else:
            self.nodes = [f"rn{i + 1}" for i in range(self.n_nodes)]
            self.slurmd_ports = {n: _free_port() for n in self.nodes}
            lines = "\n".join(
                f"NodeName={n} NodeHostname={self.node} NodeAddr=127.0.0.1 Port={self.slurmd_ports[n]} "
                f"CPUs={FAKE_CPUS} RealMemory={self.real_memory} Gres=gpu:{self.n_gpus} State=UNKNOWN"
                for n in self.nodes
            )
        self.logs.pop("slurmd", None)
        for n in self.nodes:
            self.logs["slurmd" if self.n_nodes == 1 else f"slurmd-{n}"] = self.root / "log" / f"slurmd-{n}.log"
        return lines, "".join(f"NodeName={n} Name=gpu File={gres_range}\n" for n in self.nodes)

    # ------------------------------------------------------------ processes
    def _spawn(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        out = open(self.root / "log" / f"{name}.stdout", "ab")
        self._log_handles.append(out)
        p = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
            **kw,
        )
        self.procs[name] = p
        return p

    def _wait(self, what: str, check, timeout: float | None = None):
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {p.returncode} while waiting for {what}\n{self.debug_info()}"
                    )
            if check():
                return
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}\n{self.debug_info()}")

    def _ok(self, argv: list[str]) -> bool:
        try:
            return subprocess.run(argv, env=self.env, capture_output=True, timeout=10).returncode == 0
        except subprocess.SubprocessError:
            return False

    def job_env(self, **extra) -> dict:
        """Environment for snakemake/sbatch against this cluster: ``env`` plus this
        Python's bin folder first on PATH. The slurm plugin submits with
        ``--export=ALL``, so jobs, and the ``python``/``snakemake`` their rules call,
        see the same virtualenv as the test."""
        env = dict(self.env)
        env["PATH"] = os.pathsep.join([str(self.bindir), str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def run(self, *argv, check=True, timeout=30) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster; returns CompletedProcess."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def start(self) -> SlurmCluster:
        """Start munged, slurmctld, slurmd; on any failure stop what was started."""
        reason = skip_reason()
        if reason:
            raise RuntimeError(reason)
        atexit.register(self.stop)  # daemons run in their own session: never orphan them
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> SlurmCluster:
        self._write_files()
        munge = pwd.getpwnam("munge")
        mdir = self.munge_dir
        self._spawn(
            "munged",
            [
                _which("munged"),
                "-F",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={mdir / 'munge.key'}",
                f"--pid-file={mdir / 'munged.pid'}",
                f"--seed-file={mdir / 'munged.seed'}",
                f"--log-file={mdir / 'munged.log'}",  # also copied to stdout -> logs['munged']
            ],
            user=munge.pw_uid,
            group=munge.pw_gid,
            extra_groups=[],
        )
        self._wait("munged socket", self.munge_socket.exists)
        self.slurmctld_binary = _which("slurmctld")
        self._spawn("slurmctld", [self.slurmctld_binary, "-D", "-c", "-f", str(self.conf)])
        self._wait("slurmctld (scontrol ping)", lambda: "UP" in self.run("scontrol", "ping", check=False).stdout)
        for n in self.nodes:
            self._spawn(
                self._slurmd_name(n),
                [_which("slurmd"), "-D", "-f", str(self.conf)] + (["-N", n] if self.n_nodes > 1 else []),
            )
        self._wait("nodes idle", self._node_ready)
        return self

    def _slurmd_name(self, node: str) -> str:
        return "slurmd" if self.n_nodes == 1 else f"slurmd-{node}"

    def _node_ready(self) -> bool:
        r = self.run("sinfo", "-h", "-N", "-p", self.partition, "-o", "%T", check=False)
        states = [s.rstrip("*~#") for s in r.stdout.split()]
        return r.returncode == 0 and len(states) == len(self.nodes) and all(s in ("idle", "mixed") for s in states)

    def stop(self):
        """Cancel all jobs of this cluster, then stop the daemons we started (by PID)."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", f"--partition={self.partition}", check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                r = self.run("squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i", check=False)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.5)
        for name in [*(self._slurmd_name(n) for n in self.nodes), "slurmctld", "munged"]:
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self._kill_strays()
        for h in self._log_handles:
            h.close()
        self._log_handles.clear()
        if self.munge_dir is not None:  # key and socket: never left behind
            shutil.rmtree(self.munge_dir, ignore_errors=True)
            self.munge_dir = None

    def _kill_strays(self) -> None:
        """What this cluster's daemons started and left running once they are gone (a job step whose
        slurmd or controller was stopped under it, the job's processes): every process whose
        environment names this cluster's slurm.conf, by PID."""
        mine = f"SLURM_CONF={self.conf}".encode()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if mine in (d / "environ").read_bytes().split(b"\0"):
                    os.kill(int(d.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue

    def cleanup(self):
        if self._own_root and not os.environ.get("RETHINK_SLURM_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        self.cleanup()

    # -------------------------------------------------------------- helpers
    def debug_info(self, tail: int = 40) -> str:
        parts = [f"SLURM test cluster in {self.root} (SLURM_CONF={self.conf})"]
        for name, path in self.logs.items():
            for p in dict.fromkeys((path, self.root / "log" / f"{name}.stdout")):
                if p.exists():
                    lines = p.read_text(errors="replace").splitlines()[-tail:]
                    parts.append(f"--- {p} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)

    def job_info(self, job_id: str | int) -> dict[str, str]:
        """``scontrol show job -o`` as a dict (key=value pairs)."""
        out = self.run("scontrol", "show", "job", "-o", "-d", str(job_id)).stdout
        info = {}
        for tok in re.findall(r"(\S+?)=(\S*)", out):
            info.setdefault(tok[0], tok[1])
        info["_raw"] = out
        return info

    def wait_job(self, job_id: str | int, timeout: float = 60) -> str:
        """Wait until a job leaves PENDING/RUNNING/COMPLETING; return its final state."""
        deadline = time.monotonic() + timeout
        state = "?"
        while time.monotonic() < deadline:
            state = self.job_info(job_id).get("JobState", "?")
            if state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED"):
                return state
            time.sleep(0.3)
        raise TimeoutError(f"job {job_id} still {state} after {timeout}s\n{self.debug_info()}")


try:  # the pytest fixture; the module also works without pytest
    import pytest

    @pytest.fixture(scope="session")
    def slurm_cluster(tmp_path_factory):
        """Session-wide private SLURM cluster; skips (with the reason) where impossible."""
        reason = skip_reason()
        if reason:
            pytest.skip(f"no SLURM test cluster: {reason}")
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
        try:
            cluster.start()
        except Exception as e:  # a broken setup is a failure, not a skip
            pytest.fail(f"could not start SLURM test cluster: {e}", pytrace=False)
        print(
            f"\nSLURM test cluster up: SLURM_CONF={cluster.conf}; logs: "
            + ", ".join(str(p) for p in cluster.logs.values())
        )
        yield cluster
        cluster.stop()
except ImportError:  # pragma: no cover
    pass
