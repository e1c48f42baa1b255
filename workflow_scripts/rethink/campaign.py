"""Finished work is never redone without saying so: which runs, why, and the GPU-hours at stake.

`redone(paths, segments)` takes the training segments a plan is about to run (from Snakemake's DAG in
a real run, or predicted from the files on disk in a dry run) and keeps those that retrain work a
finished evaluation already covers: a segment of a line that has a metrics JSON at or after the
segment's end (on the trunk: any of its family's tails too). `warning()` says, per line, why: the
fields of its identity that changed since its results were made (rethink.identity), or that the
checkpoints a new evaluation needs are gone. A real run stops on it unless the user confirms with
`--config confirm_rerun=true`.
"""

from __future__ import annotations

import os
from collections import defaultdict

from . import identity
from .grid import gpu_hours
from .identity_files import IdentityFiles
from .paths import Paths
from .plan import TRUNK, Segment
from .resources import seconds_per_iter

CONFIRM = "confirm_rerun"


def _finished(paths: Paths) -> dict[tuple[str, str], list[int]]:
    """(family, line) -> iterations with a metrics JSON on disk."""
    out: dict[tuple[str, str], list[int]] = {}
    for key, milestones in paths.plan.line_milestones.items():
        its = [m.iteration for m in milestones if os.path.exists(paths.metrics(m.family, m.line, m.iteration))]
        if its:
            out[key] = its
    return out


def redone(paths: Paths, segments: list[Segment]) -> list[Segment]:
    done = _finished(paths)
    plan = paths.plan
    out = []
    for seg in segments:
        later = [it for it in done.get((seg.family, seg.line), []) if it >= seg.end]
        if seg.line == TRUNK:
            later += [
                it
                for (fam, ln), its in done.items()
                if fam == seg.family and ln != TRUNK and plan.lines[(fam, ln)].start >= seg.end
                for it in its
            ]
        if later:
            out.append(seg)
    return out


def stale_reasons(identities: IdentityFiles, family: str, line: str) -> list[str]:
    """Why the results of a line no longer match: its identity's fields, old -> new."""
    path, now = identities.line_identity(family, line)
    recorded = set(identities.recorded_identities(family, line).values())
    reasons = []
    for h in sorted(r for r in recorded if r and r != now):
        old = identities.store.content_of(path, h)
        new = identities.store.content_of(path, now)
        changes = identity.diff(old, new) if old is not None and new is not None else []
        reasons += changes or [f"identity {h} -> {now} (its old content is not kept)"]
    return reasons


def predicted_segments(identities: IdentityFiles) -> list[Segment]:
    """Without the DAG (a dry run): the segments a run would train again, from the files on disk:
    every segment of a stale line, and of a line whose missing evaluations have no checkpoint."""
    paths, plan = identities.paths, identities.plan
    done = _finished(paths)
    out = []
    for (family, line), its in done.items():
        stale = bool(stale_reasons(identities, family, line))
        missing = [
            m.iteration
            for m in plan.line_milestones[(family, line)]
            if m.iteration not in its and not os.path.exists(paths.checkpoint(family, line, m.iteration))
        ]
        need = plan.lines[(family, line)].end if stale else max([m for m in missing if m < max(its)], default=0)
        segs = sorted(
            (s for s in plan.segments.values() if s.family == family and s.line == line and s.end <= need),
            key=lambda s: s.end,
        )
        out += [s for s in segs if not os.path.exists(paths.checkpoint(s.family, s.line, s.end))]
    return redone(paths, downstream(plan, out))


def downstream(plan, segments: list[Segment]) -> list[Segment]:
    """`segments` and every segment Snakemake redoes because of them: a redone checkpoint is newer
    than what was made from it, so the rest of its line trains again, and so does every tail that
    branches from the trunk at or after it."""
    first: dict[tuple[str, str], int] = {}  # (family, line) -> start of its first redone segment
    for s in segments:
        first[(s.family, s.line)] = min(s.start, first.get((s.family, s.line), s.start))
    for (family, line), start in list(first.items()):
        if line != TRUNK:
            continue
        for (fam, ln), tail in plan.lines.items():
            if fam == family and ln != TRUNK and tail.start > start:
                first[(fam, ln)] = min(tail.start, first.get((fam, ln), tail.start))
    return sorted(
        (s for s in plan.segments.values() if (s.family, s.line) in first and s.end > first[(s.family, s.line)]),
        key=lambda s: (s.family, s.line, s.end),
    )


def warning(identities: IdentityFiles, segments: list[Segment]) -> tuple[str, float]:
    """The message for segments that retrain finished work, and their GPU-hours."""
    plan = identities.plan
    by_line: dict[tuple[str, str], list[Segment]] = defaultdict(list)
    for s in segments:
        by_line[(s.family, s.line)].append(s)
    total = 0.0
    lines = []
    for (family, line), segs in sorted(by_line.items()):
        run = plan.run(segs[0].owner)
        iters = sum(s.iterations for s in segs)
        hours = gpu_hours(iters, seconds_per_iter(plan, run), run.recipe["gpus"])
        total += hours
        runs = sorted({r for s in segs for r in plan.runs_through(family, line, s.end)})
        first = min(segs, key=lambda s: s.start)
        upstream = first.start_from and first.start_from[0] != line and (family, first.start_from[0]) in by_line
        reasons = stale_reasons(identities, family, line) or (
            [
                f"starts from {family}/{first.start_from[0]} at iteration {first.start_from[1]}, which is retrained "
                "(Snakemake redoes every job downstream of a redone one)"
            ]
            if upstream
            else ["the checkpoints that new evaluations need are gone (temporary): retrained from the last one kept"]
        )
        lines.append(
            f"  {family}/{line}: {len(segs)} segment(s), {iters:,} iterations, {hours:,.1f} GPU-h "
            f"(runs: {', '.join(runs)})"
        )
        lines += [f"      {r}" for r in reasons[:12]] + (
            [f"      ... {len(reasons) - 12} more"] if len(reasons) > 12 else []
        )
    head = (
        f"this plan retrains finished work: {len(segments)} training segment(s) of {len(by_line)} line(s), "
        f"{total:,.1f} GPU-hours at stake"
    )
    return "\n".join([head, *lines]), total
