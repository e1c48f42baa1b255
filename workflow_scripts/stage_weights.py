"""stage_weights rule: copy or download pre-trained weights, check them, write their cost (rethink.stage)."""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rethink import stage  # noqa: E402

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--spec", required=True, help="JSON spec (rethink.paths.Paths.stage_spec)")
    args = ap.parse_args()
    try:
        spec = json.loads(args.spec)
        stage.stage(spec)
    except (stage.StageError, json.JSONDecodeError) as e:
        sys.exit(f"stage_weights: error: {e}")
    except KeyError as e:
        sys.exit(f"stage_weights: error: the spec lacks field {e}")
    print(f"stage_weights: {spec['source']} -> {spec['output']}")
