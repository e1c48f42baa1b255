"""The paper's conclusions, each checked against the metrics table: a verdict, not just numbers.

One row per claim of "Rethinking ImageNet Pre-training" (in the paper's words), the rule that
decides it on our metrics (written next to it, with its thresholds), the numbers the rule used,
and a verdict: ``reproduced``, ``not reproduced`` or ``not enough runs`` (with what is missing).
Written as <results>/tables/claims.{md,csv,tex} with the paper's tables, and in ``--report``.

Definitions used by the rules:

* a setting's *result*: its finished runs' final bbox AP (rethink.seeds: mean over seeds, with
  sample std and n); a setting with a run still training does not count (it is "missing");
* *best*: the highest result over the schedules of a (task, backbone, norm, data, variant, init);
* *margin* m: what "within the spread" means. With two or more seeds on both sides, two standard
  errors of the difference (rethink.seeds.standard_error); otherwise a fixed 1.0 AP, since one
  seed gives no spread (the paper's own differences, 0.1-0.4 AP, lie inside it);
* "pre-trained": any init other than random (ImageNet, the workflow's own pre-training).

A claim about "every setting that has both inits" is reproduced when every such setting passes,
not reproduced when one fails, and lacks runs when no setting has both. The tiny default gets
verdicts from its tiny runs: whatever its data says (they are not evidence about COCO).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .metrics import is_finite
from .seeds import GROUP, finals, standard_error, std_of
from .setting import RANDOM, setting_label
from .tables import _select, kind_of

FIXED_MARGIN = 1.0  # AP: the margin without a seed spread to measure it
EARLY_GAP = 3.0  # AP: how far ahead pre-training must be at the first common evaluation
SMALL_DATA_GAP = 3.0  # AP: how far ahead pre-training must be on 1k / 3.5k images
REPRODUCED, NOT_REPRODUCED, NOT_ENOUGH = "reproduced", "not reproduced", "not enough runs"
COLUMNS = ["claim", "paper", "rule", "numbers", "verdict", "missing"]


@dataclass
class Verdict:
    claim: str
    paper: str
    rule: str
    numbers: list[str] = field(default_factory=list)
    verdict: str = NOT_ENOUGH
    missing: list[str] = field(default_factory=list)


@dataclass
class Side:
    """A (group, init)'s best finished result of one metric over its schedules."""

    mean: float
    std: float
    n: int
    schedule: str
    row: pd.Series  # the setting's row of rethink.seeds.finals

    def text(self) -> str:
        spread = f" \u00b1 {self.std:.1f} [n={self.n}]" if self.n > 1 and is_finite(self.std) else ""
        return f"{self.mean:.1f}{spread} ({self.schedule})"


def _best(fin: pd.DataFrame, group: tuple, init: str, metric: str = "bbox_AP") -> Side | None:
    m = _select(fin, group, init)
    m = m[(m.status == "") & m[metric].map(is_finite)]
    if m.empty:
        return None
    r = m.loc[m[metric].idxmax()]
    return Side(float(r[metric]), float(r.get(std_of(metric), math.nan)), int(r["n"]), str(r["schedule"]), r)


def margin(a: Side, b: Side) -> float:
    se = standard_error(a.std, a.n, b.std, b.n)
    return 2 * se if is_finite(se) else FIXED_MARGIN


def _pairs(fin: pd.DataFrame, where) -> list[tuple[tuple, str]]:
    """(group, pre-trained init) of the settings selected by `where(group)` that have a random run."""
    out = []
    if fin.empty:
        return out
    plain = fin[~fin.test_aug.astype(bool)]
    for key in plain[GROUP].drop_duplicates().itertuples(index=False):
        group = tuple(key)
        if not where(group):
            continue
        inits = set(plain[(plain[GROUP] == pd.Series(group, index=GROUP)).all(axis=1)].init)
        out += [(group, i) for i in sorted(inits - {RANDOM})] if RANDOM in inits else []
    return out


def _decide(v: Verdict, results: list[bool]) -> Verdict:
    v.verdict = NOT_ENOUGH if not results else (REPRODUCED if all(results) else NOT_REPRODUCED)
    return v


def _catch_up(fin, v: Verdict, where, metric="bbox_AP", needs: str = "") -> Verdict:
    """random's best >= pre-trained's best - margin, in every selected setting with both inits."""
    results = []
    for group, init in _pairs(fin, where):
        r, p = _best(fin, group, RANDOM, metric), _best(fin, group, init, metric)
        label = setting_label(*group)
        if r is None or p is None:
            v.missing.append(f"{label}: finished {RANDOM if r is None else init} runs")
            continue
        m = margin(r, p)
        ok = r.mean >= p.mean - m
        results.append(ok)
        v.numbers.append(
            f"{label}: {RANDOM} {r.text()} vs {init} {p.text()}, m = {m:.1f}: {'within' if ok else 'below'}"
        )
    if not results and needs:
        v.missing.append(needs)
    return _decide(v, results)


def early(df: pd.DataFrame, fin: pd.DataFrame) -> Verdict:
    v = Verdict(
        "a",
        "ImageNet pre-training speeds up convergence, especially early on in training",
        f"at the first iteration both inits were evaluated (the shared trunk, mean over seeds), "
        f"pre-trained bbox AP >= random + {EARLY_GAP:.0f} AP, in every setting with both inits",
    )
    results = []
    trunk = df[(df.line == "trunk") & ~df.diverged & ~df.test_aug & df.bbox_AP.map(is_finite)]
    for group, init in _pairs(fin, lambda g: kind_of(g[0], g[3]) == "main"):
        sel = trunk[(trunk[GROUP] == pd.Series(group, index=GROUP)).all(axis=1)]
        curves = {
            i: sel[sel.init == i].drop_duplicates(["family", "iteration"]).groupby("iteration").bbox_AP.mean()
            for i in (RANDOM, init)
        }
        common = sorted(set(curves[RANDOM].index) & set(curves[init].index))
        label = setting_label(*group)
        if not common:
            v.missing.append(f"{label}: trunk evaluations of both {RANDOM} and {init}")
            continue
        it = common[0]
        r, p = float(curves[RANDOM][it]), float(curves[init][it])
        results.append(p - r >= EARLY_GAP)
        v.numbers.append(f"{label} at iteration {it:,}: {init} {p:.1f} vs {RANDOM} {r:.1f} ({p - r:+.1f})")
    if not results and not v.missing:
        v.missing.append("a setting with random and pre-trained runs")
    return _decide(v, results)


def small_data(fin: pd.DataFrame) -> Verdict:
    v = Verdict(
        "d",
        "ImageNet pre-training helps when the target data is much smaller (1k and 3.5k COCO "
        "images): training from scratch overfits",
        f"on coco_1k and on coco_3_5k: pre-trained best bbox AP >= random best + {SMALL_DATA_GAP:.0f} AP",
    )
    results, measured = [], set()
    for data in ("coco_3_5k", "coco_1k"):
        pairs = _pairs(fin, lambda g, d=data: g[3] == d)
        for group, init in pairs:
            r, p = _best(fin, group, RANDOM), _best(fin, group, init)
            if r is None or p is None:
                v.missing.append(f"{setting_label(*group)}: finished {RANDOM if r is None else init} runs")
                continue
            measured.add(data)
            results.append(p.mean - r.mean >= SMALL_DATA_GAP)
            v.numbers.append(
                f"{setting_label(*group)}: {init} {p.text()} vs {RANDOM} {r.text()} ({p.mean - r.mean:+.1f})"
            )
        if not pairs:
            v.missing.append(f"{data}: finished random and pre-trained runs")
    if all(results) and measured != {"coco_3_5k", "coco_1k"}:
        results = []  # both sizes are needed to reproduce it (one failing is enough to refute it)
    return _decide(v, results)


def localisation(fin: pd.DataFrame) -> Verdict:
    v = Verdict(
        "e1",
        "Localisation-sensitive metrics gain at least as much from training from scratch: "
        "the AP75 gap is no worse than the AP gap",
        "on each side's best finished schedule (by bbox AP), in every setting with both inits: "
        "(random - pre-trained) at bbox AP75 >= (random - pre-trained) at bbox AP - margin",
    )
    results = []
    for group, init in _pairs(fin, lambda g: kind_of(g[0], g[3]) == "main"):
        r, p = _best(fin, group, RANDOM), _best(fin, group, init)
        label = setting_label(*group)
        if r is None or p is None:
            v.missing.append(f"{label}: finished {RANDOM if r is None else init} runs")
            continue
        d_ap, d_75 = (float(r.row[k]) - float(p.row[k]) for k in ("bbox_AP", "bbox_AP75"))
        if not is_finite(d_75):
            continue
        m = margin(r, p)
        results.append(d_75 >= d_ap - m)
        v.numbers.append(f"{label}: \u0394AP75 {d_75:+.1f} vs \u0394AP {d_ap:+.1f}, m = {m:.1f}")
    return _decide(v, results)


def random_catches_up(fin: pd.DataFrame) -> Verdict:
    main = lambda g: kind_of(g[0], g[3]) == "main" and g[1] != "VGG16"  # noqa: E731
    v = Verdict(
        "b",
        "Training from random initialization can catch up with ImageNet pre-training, given enough "
        "iterations (Table 2: 41.3 vs 41.1 bbox AP, R50 GN)",
        "in every setting with both inits: random's best bbox AP over its schedules >= pre-trained's best - margin",
    )
    return _catch_up(fin, v, main, needs="a setting with random and pre-trained runs")


def no_regularisation(fin: pd.DataFrame) -> Verdict:
    v = Verdict(
        "c",
        "ImageNet pre-training shows no regularisation benefit with 10k COCO images and the same "
        "hyper-parameters for both (25.9 from scratch vs 26.0 AP)",
        "on coco_10k: random's best bbox AP >= pre-trained's best - margin",
    )
    return _catch_up(fin, v, lambda g: g[3] == "coco_10k", needs="coco_10k: finished random and pre-trained runs")


def keypoints_catch_up(fin: pd.DataFrame) -> Verdict:
    v = Verdict(
        "e2",
        "Keypoint detection, which is sensitive to localisation, also catches up from scratch (Figure 6)",
        "on keypoint runs: random's best keypoint AP >= pre-trained's best - margin",
    )
    return _catch_up(
        fin,
        v,
        lambda g: g[0] == "keypoint_rcnn",
        metric="keypoints_AP",
        needs="keypoint_rcnn: finished random and pre-trained runs",
    )


def without_normalisation(fin: pd.DataFrame) -> Verdict:
    v = Verdict(
        "f",
        "The same holds without normalisation: VGG16 Faster R-CNN from scratch reaches the pre-trained "
        "result (35.2 vs 35.6 AP)",
        "on VGG16 (norm none): random's best bbox AP >= pre-trained's best - margin",
    )
    return _catch_up(
        fin, v, lambda g: g[1] == "VGG16", needs="VGG16 none coco_full: finished random and pre-trained runs"
    )


def check(df: pd.DataFrame) -> list[Verdict]:
    """Every claim's verdict on a metrics table (rethink.collect's columns), in the paper's order."""
    fin = finals(df)
    return [
        early(df, fin),
        random_catches_up(fin),
        no_regularisation(fin),
        small_data(fin),
        localisation(fin),
        keypoints_catch_up(fin),
        without_normalisation(fin),
    ]


def to_frame(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "claim": v.claim,
                "paper": v.paper,
                "rule": v.rule,
                "numbers": "; ".join(v.numbers),
                "verdict": v.verdict,
                "missing": "; ".join(v.missing),
            }
            for v in verdicts
        ],
        columns=COLUMNS,
    )


def to_markdown(verdicts: list[Verdict]) -> str:
    lines = [
        "# The paper's claims, checked on our runs",
        "",
        "| claim | the paper says | rule | numbers | verdict | missing |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        cells = [
            v.claim,
            v.paper,
            v.rule,
            "<br>".join(v.numbers) or "\u2014",
            f"**{v.verdict}**",
            "<br>".join(v.missing) or "\u2014",
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        f"margin: two standard errors of the difference where both sides have 2+ seeds, else "
        f"{FIXED_MARGIN:.1f} AP (one seed has no spread). Definitions: rethink/claims.py.",
    ]
    return "\n".join(lines) + "\n"


def to_latex(verdicts: list[Verdict]) -> str:
    from .table_format import _tex_escape

    out = [
        "% The paper's claims, checked on our runs",
        r"\begin{tabular}{llp{5cm}l}",
        r"\toprule",
        r"claim & verdict & numbers & missing \\",
        r"\midrule",
    ]
    for v in verdicts:
        out.append(
            " & ".join(
                _tex_escape(x)
                for x in (v.claim, v.verdict, "; ".join(v.numbers) or "\u2014", "; ".join(v.missing) or "\u2014")
            )
            + r" \\"
        )
    out += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def write(df: pd.DataFrame, folder: str | os.PathLike) -> list[Path]:
    from .rehearsal import in_table

    verdicts = check(df)
    if in_table(df):  # every row says its numbers are a rehearsal's simulated ones
        for v in verdicts:
            v.verdict = f"REHEARSAL (simulated): {v.verdict}"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "claims.md", folder / "claims.tex", folder / "claims.csv"]
    paths[0].write_text(
        to_markdown(verdicts).replace(
            "# The paper's claims", "# REHEARSAL (simulated, not measured): the paper's claims", 1
        )
        if in_table(df)
        else to_markdown(verdicts)
    )
    paths[1].write_text(to_latex(verdicts))
    to_frame(verdicts).to_csv(paths[2], index=False)
    return paths
