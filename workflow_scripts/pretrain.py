"""pretrain rule: the tiny "ImageNet" pre-training on the synthetic classification set
(rethink.pretrain) -> backbone weights (.pth) + the cost JSON of what it saw.

    python workflow_scripts/pretrain.py --config <snapshot> --job pretrain/<init>/<backbone>/<norm>
    python workflow_scripts/pretrain.py --spec <file or JSON>    (rethink.job_specs.JobSpecs.pretrain_spec)

Exit status: 0 done; 143 / 138 pre-empted (rerun to resume); 3 diverged (no output); 1 error.
"""

import sys

from rethink.cli import job

if __name__ == "__main__":
    with job(
        "pretrain", __doc__, ("init", "backbone", "norm", "iterations", "batch", "base_lr", "dataset", "output")
    ) as spec:
        from rethink import loop, pretrain  # torch: inside the job's ledger row (rethink.ledger)

        sys.exit(loop.main_cli(spec, pretrain.pretrain))
