"""`snakemake grid`: print the plan of the configured grid and write <results>/grid.csv."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rethink.summary import main  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config-json", required=True, help="the validated config, as JSON")
    ap.add_argument("--source", default="config", help="config file name, for messages")
    args = ap.parse_args()
    print(main(json.loads(args.config_json), args.source))
