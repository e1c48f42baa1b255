"""train_segment rule: one training segment of one line of a family (rethink.segment.train_segment).

    python workflow_scripts/train.py --config <snapshot> --job train_segment/<family>/<line>/<iter>
    python -m torch.distributed.run --standalone --nproc_per_node=N workflow_scripts/train.py --config ... --job ...
    python workflow_scripts/train.py --spec <file or JSON>      (a spec as rethink.job_specs builds it: train_spec)

Exit status: 0 done, or diverged (a non-finite loss, or a start checkpoint marked diverged: the
output is a checkpoint marked diverged and stderr says so; rethink.segment); 143 / 138 stopped by
SIGTERM / SIGUSR1 after writing a resume checkpoint (rerun to resume); 1 any other error (one line
on stderr).
"""

import sys

from rethink.cli import job

if __name__ == "__main__":
    with job(
        "train", __doc__, ("engine", "run", "family", "line", "start", "end", "schedule", "dataset", "output")
    ) as spec:
        from rethink import loop, segment  # torch: inside the job's ledger row (rethink.ledger)

        sys.exit(loop.main_cli(spec, segment.train_segment))
