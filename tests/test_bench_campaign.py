"""`bench/bench_campaign.py --quick`, the issue's own check of the dress rehearsal: the Table 1
R50-FPN GN pair (176 jobs) rehearsed through a private 4-node SLURM cluster with the documented
command, every fault kind injected once (requeue, pre-emption, a node down, a walltime hit, kill -9
of Snakemake and its supervisor, the controller down for 65 s) and one run diverging. Asserted from
its last line: every job done, every fault survived, nothing trained again beyond the unavoidable,
no intervention, nothing lost. Its makespan and per-job overhead are benchmark figures (README),
not asserted here. The bench bounds its own waits by progress (15 minutes without a new job)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import ROOT
from rethink_lab.campaign_faults import KINDS
from rethink_lab.slurm_cluster import skip_reason

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

LAST = re.compile(
    r"^campaign rehearsal: (\d+)/(\d+) jobs, (\d+) faults survived, waste (\S+), makespan (\S+), "
    r"interventions (\d+), lost (\d+)$",
    re.M,
)


def test_quick_campaign_rehearsal_survives_every_fault(tmp_path):
    reason = skip_reason()
    if reason:
        pytest.skip(f"no SLURM test cluster: {reason}")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_campaign.py"), "--quick", "--keep", str(tmp_path / "campaign")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,  # generous: the bench stops itself after 15 minutes without a new job
    )
    out = proc.stdout + proc.stderr
    m = LAST.search(proc.stdout)
    assert proc.returncode == 0 and m, out[-6000:]
    done, planned, survived, waste, _, interventions, lost = m.groups()
    assert done == planned and int(planned) >= 176, m.group(0)
    assert int(survived) == len(KINDS) and float(waste) <= 1.1, m.group(0)
    assert (interventions, lost) == ("0", "0"), m.group(0)
    assert "two copies of a job running at once: 0 []" in proc.stdout
