"""train_segment rule: one training segment of one line of a family (rethink.loop.train_segment).

    python workflow_scripts/train.py --spec '<json>'            (rethink.paths.Paths.train_spec)
    python -m torch.distributed.run --standalone --nproc_per_node=N workflow_scripts/train.py --spec '<json>'

Exit status: 0 done; 143 / 138 stopped by SIGTERM / SIGUSR1 after writing a resume checkpoint
(rerun to resume); 3 non-finite loss (no output checkpoint); 1 any other error (one line on stderr).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rethink import loop  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="JSON spec (rethink.paths.Paths.train_spec)")
    args = ap.parse_args()
    try:
        spec = json.loads(args.spec)
    except json.JSONDecodeError as e:
        sys.exit(f"train: error: --spec is not valid JSON: {e}")
    missing = [k for k in ("engine", "run", "family", "line", "start", "end", "schedule", "dataset", "output")
               if k not in spec]
    if missing:
        sys.exit(f"train: error: the spec lacks field(s) {', '.join(missing)}")
    sys.exit(loop.main_cli(spec, loop.train_segment))
