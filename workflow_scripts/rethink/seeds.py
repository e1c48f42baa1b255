"""Seeds: one result per setting from the runs that differ only by seed, with its spread.

The paper reports one seed per setting and conclusions that rest on differences of 0.2-0.4 AP.
Several seeds of a setting (the config's ``seed`` axis) say whether such a difference means
anything. Here, for every setting (task, backbone, norm, data, variant, init, schedule, and the
augmentation flags):

* ``<stat>``: the mean over the seeds that did not diverge, of each run's latest non-diverged
  milestone (a run still training contributes its latest point and marks the setting partial);
* ``<stat>_std``: the sample standard deviation over those seeds (ddof 1; NaN with one seed);
* ``n``: how many seeds the mean is over; ``seeds``: how many runs the setting has.

A difference between two settings (random init minus pre-trained) is reported with the standard
error of a difference of means, sqrt(s_a^2 / n_a + s_b^2 / n_b), NaN unless both sides have two
seeds or more (one seed gives no estimate of the spread, and none is invented).
"""

from __future__ import annotations

import math

import pandas as pd

from .collect import STAT_COLUMNS
from .metrics import is_finite

GROUP = ["task", "backbone", "norm", "data", "variant"]
SETTING = GROUP + ["init", "schedule"]
AUG = ["train_aug", "test_aug"]


def std_of(stat: str) -> str:
    """The column that holds the seed spread of `stat`."""
    return f"{stat}_std"


def per_run(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run (and per test-time augmentation flag: a TTA evaluation is a result of its
    own): its latest non-diverged milestone, with status diverged (the run stopped on a
    non-finite loss), partial (not at its last iteration yet) or ""."""
    rows = []
    for _, g in df.groupby(["run_id", "test_aug"], sort=True):
        ok = g[~g.diverged]
        last = (ok if not ok.empty else g).sort_values("iteration").iloc[-1]
        row = last.to_dict()
        if bool(g.run_diverged.any()):
            row["status"] = "diverged"
        elif is_finite(last["iterations"]) and last["iteration"] < last["iterations"]:
            row["status"] = "partial"
        else:
            row["status"] = ""
        rows.append(row)
    return pd.DataFrame(rows)


def finals(df: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: mean, spread and count over seeds (see the module docstring). status:
    diverged (every seed diverged), partial (a seed has not reached its last iteration), else ""."""
    columns = SETTING + AUG + ["iteration", "iterations", "status", "seeds", "n"] + STAT_COLUMNS
    if df.empty:
        return pd.DataFrame(columns=columns + [std_of(c) for c in STAT_COLUMNS])
    out = []
    for key, g in per_run(df).groupby(SETTING + AUG, sort=True, dropna=False):
        good = g[g.status != "diverged"]
        row = dict(zip(SETTING + AUG, key))
        row["seeds"], row["n"] = len(g), len(good)
        row["iterations"] = float(g.iterations.max())
        if good.empty:
            row.update({c: math.nan for c in STAT_COLUMNS}, status="diverged", iteration=int(g.iteration.max()))
            row.update({std_of(c): math.nan for c in STAT_COLUMNS})
        else:
            row.update(good[STAT_COLUMNS].mean().to_dict())
            std = good[STAT_COLUMNS].std(ddof=1) if len(good) > 1 else pd.Series(math.nan, index=STAT_COLUMNS)
            row.update({std_of(c): float(v) for c, v in std.items()})
            row["status"] = "partial" if (good.status == "partial").any() else ""
            row["iteration"] = int(good.iteration.max())
        out.append(row)
    return pd.DataFrame(out)


def standard_error(sa: float, na: int, sb: float, nb: int) -> float:
    """The standard error of a difference of two means with seed spreads sa, sb over na, nb seeds;
    NaN unless both sides have at least two seeds."""
    if na < 2 or nb < 2 or not (is_finite(sa) and is_finite(sb)):
        return math.nan
    return math.sqrt(sa * sa / na + sb * sb / nb)


def difference(a, b, stat: str) -> tuple[float, float]:
    """(mean of a - mean of b, its standard error) for two rows of :func:`finals`."""
    return float(a[stat]) - float(b[stat]), standard_error(
        float(a.get(std_of(stat), math.nan)),
        int(a.get("n", 1) or 0),
        float(b.get(std_of(stat), math.nan)),
        int(b.get("n", 1) or 0),
    )
