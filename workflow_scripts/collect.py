"""CLI: every metrics JSON under --results -> one tidy table (--out, e.g. results/metrics.csv).

    collect.py --results results --out results/metrics.csv [--config config.yaml | --config-json '{...}']

The config (optional) gives each run's total iterations and LR drops where the metrics records
do not carry them. Works on a partial grid: it reads whatever metrics JSONs exist.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rethink import collect as C  # noqa: E402
from rethink.config import ConfigError  # noqa: E402
from rethink.metrics import MetricsError  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", required=True, help="results folder (holds metrics/)")
    ap.add_argument("--out", required=True, help="the metrics table to write (CSV)")
    ap.add_argument("--config", help="config YAML (for run lengths and LR drops)")
    ap.add_argument("--config-json", help="the same config as one JSON argument")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        cfg, source = C.load_config_arg(a.config, a.config_json)
        planned = C.planned_runs(cfg, source) if cfg is not None else None
        files = C.metrics_files(a.results)
        df = C.collect(a.results, planned, files)
        C.write_csv(df, a.out)
    except (MetricsError, C.CollectError, ConfigError, OSError, ValueError) as e:
        print(f"collect: error: {e}", file=sys.stderr)
        return 1
    print(f"collect: {len(files)} metrics files -> {len(df)} rows, {df.run_id.nunique()} runs -> {a.out} "
          f"({time.perf_counter() - t0:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
