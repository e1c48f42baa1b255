"""evaluate rule: COCO evaluation of one milestone checkpoint -> one metrics JSON (rethink.evaluate)."""

import sys

from rethink.cli import job

if __name__ == "__main__":
    with job("evaluate", __doc__) as spec:
        # torch, pycocotools: inside the job's ledger row (rethink.ledger)
        from rethink import evaluate
        from rethink.checkpoint import CheckpointError
        from rethink.data import DatasetError
        from rethink.metrics import MetricsError

        try:
            record = evaluate.evaluate(spec)
        except (evaluate.EvaluationError, CheckpointError, DatasetError, MetricsError) as e:
            sys.exit(f"evaluate: error: {e}")
        # COCO stats have AP; VOC's has AP50 only (rethink.evaluate), shown as such
        ap_ = {
            (t if "AP" in s else f"{t} AP50"): round(s.get("AP", s.get("AP50", float("nan"))), 2)
            for t, s in record["stats"].items()
        }
        print(
            f"evaluate: {spec['family']}/{spec['line']} iter {spec['iteration']}: AP {ap_} "
            f"({record['eval_seconds']:.1f} s) -> {spec['output']}"
        )
