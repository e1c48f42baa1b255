"""prepare_data / prepare_pretrain_data rules: make a dataset and write its manifest (rethink.data)."""

import sys
import time

from rethink.cli import job

if __name__ == "__main__":
    with job("prepare_data", __doc__) as spec:
        from rethink import data  # inside the job's ledger row (rethink.ledger)

        t0 = time.time()
        try:
            manifest = data.prepare(spec)
        except data.DatasetError as e:
            sys.exit(f"prepare_data: error: {e}")
        n = manifest.get("num_images", manifest.get("num_train_images"))
        print(
            f"prepare_data: {manifest['name']} ({manifest['kind']}, {n} train images) -> {spec['output']} "
            f"in {time.time() - t0:.1f} s"
        )
