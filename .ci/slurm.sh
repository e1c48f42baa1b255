#!/usr/bin/env bash
# Install a single-node SLURM (controller + compute daemon + clients) and munge
# on Debian/Ubuntu, for the tests in tests/test_slurm.py.
#
# Idempotent: when every needed binary is already present it does nothing and
# returns at once. It never starts daemons; tests/lab/slurm_cluster.py does that
# (in a temp dir, on private ports) and stops them again.
#
# Usage: sudo .ci/slurm.sh        (or as root: bash .ci/slurm.sh)
set -euo pipefail

need=(slurmctld slurmd sbatch squeue scontrol scancel sinfo munged munge)
missing=()
for b in "${need[@]}"; do
    if ! command -v "$b" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$b ]]; then
        missing+=("$b")
    fi
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "slurm.sh: SLURM and munge already installed ($(/usr/sbin/slurmctld -V 2>/dev/null || echo "?"))"
    exit 0
fi

echo "slurm.sh: missing ${missing[*]}; installing slurmctld slurmd slurm-client munge"
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
        echo "slurm.sh: need root (or sudo) to install packages" >&2; exit 1
    fi
else
    SUDO=()
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge
echo "slurm.sh: installed $(/usr/sbin/slurmctld -V)"
