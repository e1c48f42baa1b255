"""stage_weights rule: copy or download pre-trained weights, check them, write their cost (rethink.stage)."""

import sys

from rethink.cli import job

if __name__ == "__main__":
    with job("stage_weights", __doc__) as spec:
        from rethink import stage  # inside the job's ledger row (rethink.ledger)

        try:
            stage.stage(spec)
        except stage.StageError as e:
            sys.exit(f"stage_weights: error: {e}")
        print(f"stage_weights: {spec['source']} -> {spec['output']}")
