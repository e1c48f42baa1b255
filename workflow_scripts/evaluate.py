"""evaluate rule: COCO evaluation of one milestone checkpoint -> one metrics JSON (rethink.evaluate)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rethink import evaluate  # noqa: E402
from rethink.checkpoint import CheckpointError  # noqa: E402
from rethink.cli import read_spec  # noqa: E402
from rethink.data import DatasetError  # noqa: E402
from rethink.metrics import MetricsError  # noqa: E402

if __name__ == "__main__":
    spec = read_spec("evaluate", __doc__)
    try:
        record = evaluate.evaluate(spec)
    except (evaluate.EvaluationError, CheckpointError, DatasetError, MetricsError) as e:
        sys.exit(f"evaluate: error: {e}")
    ap_ = {t: round(s.get("AP", float("nan")), 2) for t, s in record["stats"].items()}
    print(f"evaluate: {spec['family']}/{spec['line']} iter {spec['iteration']}: AP {ap_} "
          f"({record['eval_seconds']:.1f} s) -> {spec['output']}")
