"""stage_weights rule: copy or download pre-trained weights, check them, write their cost (rethink.stage)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rethink import stage  # noqa: E402
from rethink.cli import read_spec  # noqa: E402

if __name__ == "__main__":
    spec = read_spec("stage_weights", __doc__)
    try:
        stage.stage(spec)
    except stage.StageError as e:
        sys.exit(f"stage_weights: error: {e}")
    print(f"stage_weights: {spec['source']} -> {spec['output']}")
