"""CLI: the metrics table -> the paper's tables and the claims check (md/csv/tex), figures (png/pdf).

    report.py --metrics results/metrics.csv --results results [--config CONFIG]
    report.py --config CONFIG          (the config's results folder and its metrics.csv)
              [--published results/paper/published.csv] [--pretrain band|shift]

Writes every table and the figures the grid can draw (rethink.report_targets: tables with no
runs are still written). The config (optional) gives the planned runs, for the figures and the
"partial: N of M runs done" note; without it, the runs that have metrics decide both.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rethink import claims, costs, report_targets, table_format
from rethink import collect as C
from rethink import figures as F
from rethink import published as PUB
from rethink import tables as T
from rethink.cli import recorded
from rethink.config import ConfigError


def build(metrics: str, results: str, planned=None, published: str | None = None, pretrain: str = "band") -> dict:
    """Tables and figures from the metrics table; returns what the figures drew."""
    df = C.read_csv(metrics)
    pub = PUB.load(published or PUB.DEFAULT_PATH)
    for table in T.build_all(df, pub).values():
        table_format.write(table, Path(results) / "tables")
    claims.write(df, Path(results) / "tables")
    costs.write_for(results, planned.attrs.get("plan") if planned is not None else None)  # from the ledger
    settings = zip(planned.task, planned.data) if planned is not None else zip(df.task, df.data)
    names = report_targets.figures_for(settings)
    drawn = F.build_all(df, pub, Path(results) / "figures", planned, pretrain, names)
    missing = [p for p in report_targets.targets(results, names) if not Path(p).exists()]
    if missing:
        raise RuntimeError(f"report targets not written: {', '.join(missing)}")
    return drawn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", help="metrics table written by collect.py (default: <results>/metrics.csv)")
    ap.add_argument("--results", help="results folder: writes tables/ and figures/ there (default: the config's)")
    ap.add_argument("--job", help="the job's name (the rule's), for its ledger row (rethink.ledger)")
    ap.add_argument("--config", help="config YAML or snapshot (planned runs, for the partial-grid note)")
    ap.add_argument("--published", help="the paper's numbers (default results/paper/published.csv)")
    ap.add_argument(
        "--pretrain",
        choices=["band", "shift"],
        default="band",
        help="pre-training in the convergence plots: a band (default) or shift the curves",
    )
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        cfg, source = C.load_config_arg(a.config)
        planned = C.planned_runs(cfg, source) if cfg is not None else None
        if not a.results and planned is None:
            raise C.CollectError("a default --results needs --config")
        a.results = a.results or planned.attrs["config"]["results"]
        a.metrics = a.metrics or f"{a.results}/metrics.csv"
        build(a.metrics, a.results, planned, a.published, a.pretrain)
    except (C.CollectError, PUB.PublishedError, ConfigError, OSError, ValueError, RuntimeError) as e:
        print(f"report: error: {e}", file=sys.stderr)
        return 1
    print(
        f"report: the tables and figures under {a.results}/tables and {a.results}/figures "
        f"({time.perf_counter() - t0:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    with recorded("report", sys.argv[1:]):
        sys.exit(main())
