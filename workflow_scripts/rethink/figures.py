# over 400 lines: the three figures share one drawing vocabulary (RC, colours, legend, the convergence panel)
"""The paper's figures from the metrics table: PNG (150 dpi) and PDF under <results>/figures/.

    convergence   AP vs iterations (k), random init vs pre-trained, one panel per (task, backbone,
                  norm, data, variant) of ours (paper Figures 1, 3, 4; keypoint runs: Figure 6;
                  the Table 3 runs). Evaluations with test-time augmentation are not drawn.
                  Each family's constant-LR trunk is drawn once; every schedule is a tail that
                  branches off it at its first LR drop; dotted vertical lines mark LR drops;
                  filled dots mark schedule ends, hollow stars the paper's number at that end.
                  Pre-training is shown as a band from 0 to the init's pre-training iterations
                  (``pretrain="band"``, default) or by shifting the pre-trained curves right by
                  them (``pretrain="shift"``, x = pre-training + fine-tuning iterations).
    samples_seen  images, instances and pixels seen: pre-training + fine-tuning vs from scratch,
                  grouped bars per schedule (paper Figure 2).
    less_data     convergence panels for COCO subsets and VOC (paper Figures 7, 8); only for a grid
                  that has such runs (rethink.report_targets.figures_for).

Figures build from whatever metrics exist; a partial grid says "partial: N of M runs done".
A figure with nothing to draw still gets written (it says so and lists the paper's numbers).
Runs marked diverged are never drawn as curves; the panel names them instead. Where an init has
several seeds, each seed's curve is drawn thin inside a band of mean ± sample std over the seeds.
Each plot function returns what it drew (panel -> curves), so tests can check the data.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from . import published as pubmod  # noqa: E402
from .metrics import is_finite  # noqa: E402
from .report_targets import FIGURES  # noqa: E402
from .setting import RANDOM, group_order, inits_in_order, setting_label  # noqa: E402
from .tables import GROUP, kind_of  # noqa: E402

PRETRAINED_COLORS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b"]
RANDOM_COLOR = "#d62728"
RC = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "figure.dpi": 150,
}


def primary_metric(task: str, data: str) -> str:
    if task == "keypoint_rcnn":
        return "keypoints_AP"
    if data.startswith("voc"):
        return "voc_AP50"
    return "bbox_AP"


def _label(metric: str) -> str:
    t, s = metric.split("_", 1)
    return {"bbox": "bbox", "segm": "mask", "keypoints": "keypoint", "voc": "VOC"}[t] + " " + s


def _colors(inits) -> dict[str, str]:
    out, k = {}, 0
    for i in inits_in_order(inits):
        if i == RANDOM:
            out[i] = RANDOM_COLOR
        else:
            out[i] = PRETRAINED_COLORS[k % len(PRETRAINED_COLORS)]
            k += 1
    return out


def human(n: float) -> str:
    """450000 -> '450k', 128116500 -> '128M', 6.42e12 -> '6.42T', 60 -> '60'."""
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def progress(df: pd.DataFrame, planned: pd.DataFrame | None = None) -> tuple[int, int, str]:
    """(runs done, runs planned, a one-line note; "" when the grid is complete)."""
    runs = set(df.run_id) if not df.empty else set()
    total = len(set(planned.run_id) | runs) if planned is not None and not planned.empty else len(runs)
    done = int(df[df.final & ~df.run_diverged].run_id.nunique()) if not df.empty else 0
    if not df.empty and df.iterations.isna().all() and (planned is None or planned.empty):
        return len(runs), total, f"{len(runs)} runs with metrics (run lengths unknown)"
    note = "" if done == total and total else f"partial: {done} of {total} runs done"
    return done, total, note


def _groups(df: pd.DataFrame, kinds: set[str]) -> list[tuple]:
    if df.empty:
        return []
    keys = []
    for k in df[GROUP + ["train_aug"]].drop_duplicates().itertuples(index=False):
        key = tuple(k)[: len(GROUP)]
        if kind_of(k.task, k.data, k.train_aug) in kinds and key not in keys:
            keys.append(key)
    return sorted(keys, key=group_order)


def draw_panel(ax, g: pd.DataFrame, group: tuple, pub: pd.DataFrame, pretrain: str = "band", unit: float = 1e3) -> dict:
    """One convergence panel (x in iterations / `unit`); returns {"curves", "diverged", "paper"}."""
    panel = _Panel(ax, g, group, pub, unit)
    ok = g[~g.run_diverged & ~g.diverged]
    pre_iters: dict[str, float] = {}
    for init in inits_in_order(g.init.unique()):
        p_it = g[g.init == init].pretrain_iterations.max()
        if is_finite(p_it):
            pre_iters[init] = float(p_it)
        shift = float(p_it) if (pretrain == "shift" and is_finite(p_it)) else 0.0
        panel.draw_init(ok[ok.init == init], init, shift)
    for d in sorted(panel.drops):
        ax.axvline(d / unit, color="0.6", ls=":", lw=0.7, zorder=0)
    if pretrain == "band" and pre_iters:
        panel.draw_pretraining(pre_iters)
    panel.label(shifted=pretrain == "shift" and bool(pre_iters))
    return panel.drawn


class _Panel:
    """What draw_panel draws into `ax` and records in `drawn`, one init's curves at a time: its
    trunks, each run's tail from its branch point, schedule ends, LR drops and the paper's numbers."""

    def __init__(self, ax, g: pd.DataFrame, group: tuple, pub: pd.DataFrame, unit: float):
        self.ax, self.g, self.group, self.pub, self.unit = ax, g, group, pub, unit
        self.metric = primary_metric(group[0], group[3])
        self.colors = _colors(g.init.unique())
        self.drawn = {"curves": [], "diverged": sorted(g[g.run_diverged].run_id.unique()), "paper": [], "bands": []}
        self.drops: set[float] = set()
        self.xmax = float(g.iteration.max()) if not g.empty else 1.0

    def draw_init(self, gi: pd.DataFrame, init: str, shift: float) -> None:
        """One init's runs (not diverged), shifted right by `shift` iterations; several seeds: each
        drawn thin inside the band of their spread."""
        c = self.colors[init]
        several = gi.seed.nunique() > 1
        style = {"color": c, "lw": 0.7, "alpha": 0.55} if several else {"color": c, "lw": 1.2, "alpha": 0.9}
        if several:
            _seed_bands(self.ax, gi, self.metric, init, c, shift, self.unit, self.drawn)
        for (family, _seed), gf in gi.groupby(["family", "seed"], sort=True):
            trunk = gf[gf.line == "trunk"].drop_duplicates("iteration").sort_values("iteration")
            if not trunk.empty:
                self._curve(trunk, shift, style, {"init": init, "line": "trunk", "family": family})
            for rid, gr in gf.groupby("run_id", sort=True):
                self._draw_run(gr, rid, init, shift, style)

    def _curve(self, pts: pd.DataFrame, shift: float, style: dict, record: dict) -> None:
        x, y = pts.iteration.to_numpy(float), pts[self.metric].to_numpy(float)
        self.ax.plot((x + shift) / self.unit, y, "-", **style)
        self.drawn["curves"].append({**record, "x": list(x), "y": list(y)})

    def _draw_run(self, gr: pd.DataFrame, rid: str, init: str, shift: float, style: dict) -> None:
        """A run's tail from its branch point (the trunk's last point it shares), its end (a dot
        and the schedule's name when final), its LR drops and the paper's number at its end."""
        tail = gr[gr.line != "trunk"].sort_values("iteration")
        branch = gr[gr.line == "trunk"].sort_values("iteration").tail(1)
        if not tail.empty:
            self._curve(
                pd.concat([branch, tail]), shift, style, {"init": init, "line": str(tail.line.iloc[0]), "run_id": rid}
            )
        last = gr.sort_values("iteration").iloc[-1]
        end_it = float(last.iterations) if is_finite(last.iterations) else float(last.iteration)
        self.xmax = max(self.xmax, end_it + shift)
        c, x_last = style["color"], (last.iteration + shift) / self.unit
        if bool(last.final):
            self.ax.plot(x_last, last[self.metric], "o", color=c, ms=3.5, zorder=3)
            self.ax.annotate(
                str(last.schedule),
                (x_last, last[self.metric]),
                textcoords="offset points",
                xytext=(2, 3 if init == RANDOM else -8),
                fontsize=6,
                color=c,
            )
        self.drops |= _lr_drops(gr, last, shift)
        self._paper_star(last, init, end_it, shift, c)

    def _paper_star(self, last, init: str, end_it: float, shift: float, color) -> None:
        """The paper's number for this run's schedule (not for a variant), a hollow star at the
        schedule's end (where the run's length is unknown: the paper's length)."""
        task, backbone, norm, data, variant = self.group
        if variant:
            return
        key = {
            "task": task,
            "backbone": backbone,
            "norm": norm,
            "init": init,
            "data": data,
            "schedule": str(last.schedule),
            "metric": self.metric,
        }
        paper = pubmod.lookup(self.pub, **key)
        if not is_finite(paper):
            return
        px = end_it if is_finite(last.iterations) else pubmod.iterations_of(self.pub, **key)
        if is_finite(px):
            self.ax.plot((px + shift) / self.unit, paper, "*", mfc="none", mec=color, ms=7, mew=0.9, zorder=4)
            self.drawn["paper"].append({"init": init, "schedule": str(last.schedule), "x": px, "y": paper})

    def draw_pretraining(self, pre_iters: dict[str, float]) -> None:
        """Each pre-trained init's pre-training as a band from 0 along the x axis, with a note."""
        for k, (init, p) in enumerate(sorted(pre_iters.items())):
            pre = self.g[self.g.init == init].iloc[0]
            self.ax.fill_between(
                [0, min(p, self.xmax) / self.unit],
                0,
                0.035,
                transform=self.ax.get_xaxis_transform(),
                color=self.colors[init],
                alpha=0.25,
                lw=0,
            )
            txt = f"{init} pre-training: {human(p)} iter"
            if is_finite(pre.pretrain_images):
                txt += f", {human(pre.pretrain_images)} images"
            if p > self.xmax:
                txt += " (beyond axis)"
            self.ax.text(0.01, 0.045 + 0.05 * k, txt, transform=self.ax.transAxes, fontsize=6, color=self.colors[init])

    def label(self, shifted: bool) -> None:
        """The diverged runs' names, axes labels, title and grid."""
        ax = self.ax
        if self.drawn["diverged"]:
            ax.text(
                0.01,
                0.97,
                "diverged: " + ", ".join(self.drawn["diverged"]),
                transform=ax.transAxes,
                fontsize=6,
                va="top",
                color="0.3",
            )
        ax.set_xlim(left=min(0, ax.get_xlim()[0]))
        ax.set_xlabel(
            ("iterations (k)" if self.unit == 1e3 else "iterations") + (" incl. pre-training" if shifted else "")
        )
        ax.set_ylabel(_label(self.metric))
        ax.set_title(setting_label(*self.group))
        ax.grid(alpha=0.25, lw=0.5)


def _lr_drops(gr: pd.DataFrame, last, shift: float) -> set[float]:
    """A run's LR drops (iterations + `shift`): its recorded lr_drops, else, where unknown, the
    evaluated iterations at which the recorded LR fell."""
    drops = {float(d) + shift for d in str(last.lr_drops).split(";") if d.strip()}
    if not str(last.lr_drops).strip():
        seq = gr.sort_values("iteration")
        fell = seq.lr.to_numpy(float)
        for a, b, it in zip(fell, fell[1:], seq.iteration.to_numpy(float)[1:]):
            if b < a * 0.999:
                drops.add(it + shift)
    return drops


def _seed_bands(ax, gi: pd.DataFrame, metric: str, init: str, color, shift: float, unit: float, drawn: dict):
    """Where an init has several seeds: per line, the band mean ± sample std over the seeds at
    each evaluated iteration that two or more seeds reached (rethink.seeds' spread)."""
    for line, gl in gi.groupby("line", sort=True):
        pts = gl.drop_duplicates(["family", "iteration"]).groupby("iteration")[metric].agg(["mean", "std", "count"])
        pts = pts[pts["count"] > 1]
        if pts.empty:
            continue
        x = pts.index.to_numpy(float)
        lo, hi = (pts["mean"] - pts["std"]).to_numpy(float), (pts["mean"] + pts["std"]).to_numpy(float)
        ax.fill_between((x + shift) / unit, lo, hi, color=color, alpha=0.2, lw=0)
        drawn["bands"].append(
            {
                "init": init,
                "line": str(line),
                "x": list(x),
                "lo": list(lo),
                "hi": list(hi),
                "n": [int(n) for n in pts["count"]],
            }
        )


def _legend(fig, inits, ncol: int = 5) -> None:
    from matplotlib.lines import Line2D

    colors = _colors(inits)
    handles = [
        Line2D([], [], color=c, lw=1.5, label="random init" if i == RANDOM else f"pre-trained ({i})")
        for i, c in colors.items()
    ]
    handles += [
        Line2D([], [], marker="o", ls="", color="0.3", ms=4, label="schedule end (ours)"),
        Line2D([], [], marker="*", ls="", mfc="none", mec="0.3", ms=7, label="paper"),
        Line2D([], [], color="0.6", ls=":", label="LR drop"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=ncol, frameon=False, bbox_to_anchor=(0.5, 0.0))


def _placeholder(title: str, lines: list[str]):
    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.02, 0.9, "\n".join(lines), va="top", ha="left", fontsize=7, family="monospace", transform=ax.transAxes)
    return fig


def _paper_lines(pub: pd.DataFrame, sources: list[str]) -> list[str]:
    p = pub[pub.source.isin(sources)]
    return [
        f"{r.source}: {r.task} {r.backbone} {r.norm} {r.init} {r.data} {r.schedule or ''} {r.metric} = {r.value:g}"
        for r in p.itertuples(index=False)
    ][:20]


def convergence(df, pub, kinds, title, pretrain="band", note="", empty_sources=()) -> tuple[plt.Figure, dict]:
    groups = _groups(df, kinds)
    if not groups:
        fig = _placeholder(
            title, ["no metrics of ours for this figure yet", "paper:"] + _paper_lines(pub, list(empty_sources))
        )
        return fig, {}
    with plt.rc_context(RC):
        ncol = min(2, len(groups))
        nrow = math.ceil(len(groups) / ncol)
        unit = 1e3 if df.iteration.max() >= 10_000 else 1.0
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol if ncol > 1 else 5.0, 2.7 * nrow + 0.8), squeeze=False)
        drawn = {}
        for ax, group in zip(axes.flat, groups):
            sel = df
            for col, v in zip(GROUP, group):
                sel = sel[sel[col] == v]
            drawn[setting_label(*group)] = draw_panel(ax, sel, group, pub, pretrain, unit)
        for ax in list(axes.flat)[len(groups) :]:
            ax.axis("off")
        _legend(fig, df.init.unique(), ncol=3 if ncol == 1 else 5)
        fig.suptitle(title + (f"\n[{note}]" if note else ""), fontsize=9)
        fig.tight_layout(rect=(0, (0.14 if ncol == 1 else 0.08) / nrow, 1, 0.97))
    return fig, drawn


def samples_seen(df, pub, note="") -> tuple[plt.Figure, dict]:
    """Figure 2: images/instances/pixels seen per schedule, pre-training stacked under fine-tuning."""
    groups = _groups(df, {"main"})
    title = "Samples seen: pre-training + fine-tuning vs random init (paper Figure 2)"
    if not groups:
        return _placeholder(title, ["no metrics of ours yet"]), {}
    counters = ["images", "instances", "pixels"]
    drawn = {}
    with plt.rc_context(RC):
        fig, axes = plt.subplots(len(groups), 3, figsize=(7.2, 2.3 * len(groups) + 0.6), squeeze=False)
        for row, group in zip(axes, groups):
            sel = df[~df.run_diverged]
            for col, v in zip(GROUP, group):
                sel = sel[sel[col] == v]
            last = sel.sort_values("iteration").groupby("run_id").tail(1)
            scheds = pubmod.sort_schedules(last.schedule)
            inits = inits_in_order(last.init.unique())
            colors = _colors(inits)
            width = 0.8 / max(1, len(inits))
            label = setting_label(*group)
            drawn[label] = []
            for ax, counter in zip(row, counters):
                for k, init in enumerate(inits):
                    for j, s in enumerate(scheds):
                        r = last[(last.init == init) & (last.schedule == s)]
                        if r.empty:
                            continue
                        r = r.iloc[0]
                        pre = float(r[f"pretrain_{counter}"]) if is_finite(r[f"pretrain_{counter}"]) else 0.0
                        fine = float(r[counter])
                        x = j + (k - (len(inits) - 1) / 2) * width
                        ax.bar(x, pre, width * 0.95, color=colors[init], alpha=0.35, hatch="///", lw=0)
                        ax.bar(x, fine, width * 0.95, bottom=pre, color=colors[init])
                        drawn[label].append(
                            {
                                "init": init,
                                "schedule": s,
                                "counter": counter,
                                "pretrain": pre,
                                "finetune": fine,
                                "partial": not bool(r.final),
                            }
                        )
                ax.set_xticks(range(len(scheds)))
                ax.set_xticklabels(scheds)
                ax.set_title(counter, pad=12)
                if counter == "images":
                    ax.set_ylabel(label)
                ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        from matplotlib.patches import Patch

        handles = [
            Patch(color=c, label=("random init" if i == RANDOM else f"fine-tuning ({i})"))
            for i, c in _colors(df.init.unique()).items()
        ]
        handles.append(Patch(facecolor="0.8", hatch="///", label="pre-training"))
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
        fig.suptitle(title + (f"\n[{note}]" if note else ""), fontsize=9)
        fig.tight_layout(rect=(0, 0.25 / (2.3 * len(groups) + 0.6), 1, 0.96))
    return fig, drawn


def save(fig, folder: str | os.PathLike, name: str) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        p = folder / f"{name}.{ext}"
        fig.savefig(p, dpi=150 if ext == "png" else None)
        out.append(p)
    plt.close(fig)
    return out


def _rehearsal_save(fig, folder, name: str) -> list[Path]:
    """save() of a rehearsal's figure: REHEARSAL in its title and across it, ours marked simulated."""
    from .rehearsal import LABEL

    fig.suptitle(f"{LABEL}\n{fig.get_suptitle()}", fontsize=9, color="darkred")
    fig.text(0.5, 0.5, "REHEARSAL", fontsize=48, color="red", alpha=0.12, rotation=25, ha="center", va="center")
    for legend in fig.legends:
        for text in legend.get_texts():
            if text.get_text() not in ("paper", "LR drop"):
                text.set_text(f"{text.get_text()} (simulated)")
    return save(fig, folder, name)


def build_all(
    df: pd.DataFrame, pub: pd.DataFrame, folder, planned=None, pretrain="band", names=FIGURES
) -> dict[str, dict]:
    """Write the figures `names` (rethink.report_targets.figures_for); returns {figure name: what it drew}."""
    from .rehearsal import in_table

    _, _, note = progress(df, planned)
    write = _rehearsal_save if in_table(df) else save
    df = df[~df.test_aug]  # curves and counts: the plain evaluations (a TTA row is one more point)
    drawn = {}
    fig, drawn["convergence"] = convergence(
        df,
        pub,
        {"main", "keypoints", "enhanced"},
        "Convergence: random init vs pre-trained (paper Figures 1, 3, 4, 6; Table 3 runs)",
        pretrain,
        note,
        empty_sources=["table1"],
    )
    write(fig, folder, "convergence")
    fig, drawn["samples_seen"] = samples_seen(df, pub, note)
    write(fig, folder, "samples_seen")
    if "less_data" in names:
        fig, drawn["less_data"] = convergence(
            df,
            pub,
            {"less_data", "voc"},
            "Less data and VOC (paper Figures 7, 8)",
            pretrain,
            note,
            empty_sources=["figure7", "figure8"],
        )
        write(fig, folder, "less_data")
    return drawn
