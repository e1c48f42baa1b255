"""`snakemake grid`: print the plan of the configured grid, and what the ledger says it cost so far;
write <results>/grid.csv (and the ledger's jobs.csv and timeline.png). `snakemake speeds`: write
the measured-speeds overlay <results>/campaign/measured_speeds.yaml.

    grid_summary.py --config <workdir>/specs/config-<hash>.json [--speeds]    (the snapshot, rethink.jobs)
"""

import argparse
import sys

from rethink import jobs
from rethink.summary import main, speeds

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the config snapshot the workflow wrote")
    ap.add_argument("--speeds", action="store_true", help="write the measured-speeds overlay instead")
    args = ap.parse_args()
    try:
        cfg, source = jobs.read_snapshot(args.config)
    except jobs.JobError as e:
        sys.exit(f"grid: error: {e}")
    print(speeds(cfg, source) if args.speeds else main(cfg, source))
