"""pretrain rule: the tiny "ImageNet" pre-training on the synthetic classification set
(rethink.pretrain) -> backbone weights (.pth) + the cost JSON of what it saw.

    python workflow_scripts/pretrain.py --spec '<json>'          (rethink.paths.Paths.pretrain_spec)

Exit status as workflow_scripts/train.py (0, 143/138 preempted, 3 diverged, 1 error).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rethink import loop, pretrain  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="JSON spec (rethink.paths.Paths.pretrain_spec)")
    args = ap.parse_args()
    try:
        spec = json.loads(args.spec)
    except json.JSONDecodeError as e:
        sys.exit(f"pretrain: error: --spec is not valid JSON: {e}")
    missing = [k for k in ("init", "backbone", "norm", "iterations", "batch", "base_lr", "dataset", "output")
               if k not in spec]
    if missing:
        sys.exit(f"pretrain: error: the spec lacks field(s) {', '.join(missing)}")
    sys.exit(loop.main_cli(spec, pretrain.pretrain))
