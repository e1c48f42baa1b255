"""`snakemake grid`: print the plan of the configured grid and write <results>/grid.csv.

    grid_summary.py --config <workdir>/specs/config-<hash>.json     (the snapshot, rethink.jobs)
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rethink import jobs  # noqa: E402
from rethink.summary import main  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="the config snapshot the workflow wrote")
    args = ap.parse_args()
    try:
        cfg, source = jobs.read_snapshot(args.config)
    except jobs.JobError as e:
        sys.exit(f"grid: error: {e}")
    print(main(cfg, source))
