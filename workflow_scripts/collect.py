"""CLI: every metrics JSON under --results -> one tidy table (--out, e.g. results/metrics.csv).

    collect.py --results results --out results/metrics.csv [--config CONFIG] [--planned]
    collect.py --config CONFIG [--planned]          (the config's results folder and its metrics.csv)

The config (optional: a config YAML, or the snapshot the workflow wrote, rethink.jobs) gives each
run's total iterations and LR drops where the metrics records do not carry them. Without
--planned it works on a partial grid: it reads whatever metrics JSONs exist; with --planned (the
collect rule) it reads exactly the config's planned metrics files, the rule's input.
"""

from __future__ import annotations

import argparse
import sys
import time

from rethink import collect as C
from rethink.cli import recorded
from rethink.config import ConfigError
from rethink.metrics import MetricsError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", help="results folder (holds metrics/; default: the config's)")
    ap.add_argument("--out", help="the metrics table to write (CSV; default: <results>/metrics.csv)")
    ap.add_argument("--job", help="the job's name (the rule's), for its ledger row (rethink.ledger)")
    ap.add_argument("--config", help="config YAML or snapshot (for run lengths and LR drops)")
    ap.add_argument("--planned", action="store_true", help="read the config's planned metrics files, not a glob")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        cfg, source = C.load_config_arg(a.config)
        planned = C.planned_runs(cfg, source) if cfg is not None else None
        if planned is None and (a.planned or not a.results):
            raise C.CollectError("--planned and a default --results need --config")
        a.results = a.results or planned.attrs["config"]["results"]
        a.out = a.out or f"{a.results}/metrics.csv"
        files = C.planned_files(planned) if a.planned else C.metrics_files(a.results)
        df = C.collect(a.results, planned, files)
        C.write_csv(df, a.out)
    except (MetricsError, C.CollectError, ConfigError, OSError, ValueError) as e:
        print(f"collect: error: {e}", file=sys.stderr)
        return 1
    print(
        f"collect: {len(files)} metrics files -> {len(df)} rows, {df.run_id.nunique()} runs -> {a.out} "
        f"({time.perf_counter() - t0:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    with recorded("collect", sys.argv[1:]):
        sys.exit(main())
