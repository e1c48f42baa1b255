"""Check config files as the workflow checks them, without Snakemake: where Snakemake's own loader says
only "Config file is not valid JSON or YAML" (or "... with keys at top level", or fails on a file that
is not there), this names the file, the line and the column. Then the files merged in order and the
`--config` entries over them, as Snakemake merges them, go through the workflow's validation and grid
(rethink.sources.checked, what a dry run runs).

    python workflow_scripts/check_config.py configs/tiny.yaml mine.yaml --config eval_period=10

Exit 0 with a one-line summary, or 1 with the error (file, field, value) on stderr.
"""

import argparse
import sys

from rethink import config as rconfig
from rethink import sources

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configfiles", nargs="+", help="config files, in the order of --configfile")
    ap.add_argument("--config", nargs="*", default=[], help="KEY=VALUE entries, as snakemake --config takes them")
    a = ap.parse_args()
    try:
        merged: dict = {}
        from snakemake.cli import parse_config  # Snakemake's own merge and --config parser
        from snakemake.utils import update_config

        for f in a.configfiles:
            update_config(merged, rconfig.check_file(f))
        try:
            cli = parse_config(a.config)
        except ValueError as e:
            sys.exit(
                f"--config {' '.join(a.config)}: {e} (a key is a top-level field; a nested one is given as "
                f"a mapping: recipe='{{\"batch\": 4}}')"
            )
        update_config(merged, cli)
        merged.pop(sources.CONFIRM, None)
        cfg, grid, source = sources.checked(merged, cli, a.configfiles)
    except rconfig.ConfigError as e:
        sys.exit(str(e))
    print(f"{source}: valid: {len(grid.runs)} runs, {len(cfg['experiments'])} experiments")
