"""The training plan: the grid's runs -> lines of training -> segments and milestones.

Runs of one family (same everything but the schedule length) are identical until their
first LR drop, so the plan trains the constant-LR **trunk** once, up to the latest first
drop of the family, and each run trains only its **tail**, starting from the trunk's
checkpoint at its own first drop (its **branch point**). A family of one run (or one with
sharing switched off) is a single line named after its schedule: a plain run.

Every line is cut into **segments** (one training job each) at branch points, at
milestones (evaluation points: multiples of `eval_period`, branch points and line ends), at
an architecture switch (`cascade_from_iter`) and so that no segment is longer than
`max_segment_iters`. A segment's output is the checkpoint at its end; a milestone's output is a
metrics JSON. The last segment of a run writes the run's model, which is kept. The final
milestone of a run whose experiment sets `test_aug` is evaluated a second time, with test-time
augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

from .grid import Grid, Run

TRUNK = "trunk"


@dataclass(frozen=True)
class Line:
    family: str
    name: str  # "trunk" or the schedule name of the run it belongs to
    start: int
    end: int
    owner: str  # the run whose recipe and LR schedule this line trains with
    parent: tuple[str, int] | None  # (line, iteration) of the checkpoint it starts from; None = from init


@dataclass(frozen=True)
class Segment:
    family: str
    line: str
    start: int
    end: int
    owner: str
    start_from: tuple[str, int] | None  # (line, iteration) of the checkpoint it resumes from; None = from init

    @property
    def iterations(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Milestone:
    family: str
    line: str
    iteration: int
    runs: tuple[str, ...]  # runs whose curve passes through this checkpoint


class Plan:
    def __init__(self, grid: Grid):
        self.grid = grid
        self.eval_period = int(grid.config.get("eval_period", 20000))
        self.max_segment = int(grid.config.get("max_segment_iters", 40000))
        self.lines: dict[tuple[str, str], Line] = {}
        self.segments: dict[tuple[str, str, int], Segment] = {}
        self.milestones: dict[tuple[str, str, int], Milestone] = {}
        self.run_lines: dict[str, list[tuple[str, int, int]]] = {}  # run -> [(line, from, to)]
        for family, members in grid.families.items():
            self._plan_family(family, members)
        # (family, line, iteration) of each run's final checkpoint -> the run: kept as its model
        self.finals: dict[tuple[str, str, int], str] = {}
        for run_id, lines in self.run_lines.items():
            line, _, end = lines[-1]
            self.finals[(self.grid.runs[run_id].family, line, end)] = run_id
        # final checkpoints also evaluated with test-time augmentation (experiments' test_aug)
        self.tta_milestones: dict[tuple[str, str, int], Milestone] = {}
        for run in grid.runs.values():
            if run.test_aug:
                ms = self.final_milestone(run.run_id)
                self.tta_milestones[(ms.family, ms.line, ms.iteration)] = ms

    # ----------------------------------------------------------------- building
    def _plan_family(self, family: str, members: list[Run]) -> None:
        if len(members) == 1:
            run = members[0]
            line = Line(family, run.schedule_name, 0, run.iterations, run.run_id, None)
            self._add_line(line, branch_points=[])
            self.run_lines[run.run_id] = [(line.name, 0, run.iterations)]
            self._add_milestones(line, [])
            return
        branch = {r.run_id: r.schedule.first_drop for r in members}
        trunk_end = max(branch.values())
        owner = max(members, key=lambda r: (branch[r.run_id], r.iterations)).run_id
        trunk = Line(family, TRUNK, 0, trunk_end, owner, None)
        self._add_line(trunk, branch_points=sorted(set(branch.values())))
        self._add_milestones(trunk, sorted(set(branch.values())))
        for run in members:
            b = branch[run.run_id]
            self.run_lines[run.run_id] = [(TRUNK, 0, b)]
            if run.iterations > b:
                tail = Line(family, run.schedule_name, b, run.iterations, run.run_id, (TRUNK, b))
                self._add_line(tail, branch_points=[])
                self._add_milestones(tail, [])
                self.run_lines[run.run_id].append((tail.name, b, run.iterations))

    def _eval_points(self, line: Line, extra: list[int]) -> list[int]:
        first = (line.start // self.eval_period + 1) * self.eval_period
        pts = set(range(first, line.end, self.eval_period)) | {line.end}
        pts |= {p for p in extra if line.start < p <= line.end}
        return sorted(pts)

    def _add_line(self, line: Line, branch_points: list[int]) -> None:
        self.lines[(line.family, line.name)] = line
        # an architecture switch (cascade_from_iter) starts a segment: one job trains one model
        switch = self.grid.runs[line.owner].recipe.get("cascade_from_iter")
        switches = [switch] if switch is not None and line.start < switch < line.end else []
        cuts = sorted({line.start, line.end, *self._eval_points(line, branch_points), *switches})
        prev_from = line.parent
        for a, b in zip(cuts, cuts[1:]):
            n = math.ceil((b - a) / self.max_segment)
            bounds = [a + round(i * (b - a) / n) for i in range(n + 1)]
            for s, e in zip(bounds, bounds[1:]):
                seg = Segment(line.family, line.name, s, e, line.owner, prev_from)
                self.segments[(line.family, line.name, e)] = seg
                prev_from = (line.name, e)

    def _add_milestones(self, line: Line, branch_points: list[int]) -> None:
        for it in self._eval_points(line, branch_points):
            self.milestones[(line.family, line.name, it)] = Milestone(
                line.family, line.name, it, self.runs_through(line.family, line.name, it)
            )

    # ----------------------------------------------------------------- queries
    def run(self, run_id: str) -> Run:
        return self.grid.runs[run_id]

    def segment(self, family: str, line: str, end: int) -> Segment:
        try:
            return self.segments[(family, line, int(end))]
        except KeyError:
            raise KeyError(f"no training segment of family {family}, line {line} ends at iteration {end}") from None

    def milestone(self, family: str, line: str, iteration: int) -> Milestone:
        try:
            return self.milestones[(family, line, int(iteration))]
        except KeyError:
            raise KeyError(f"no milestone of family {family}, line {line} at iteration {iteration}") from None

    def tta_milestone(self, family: str, line: str, iteration: int) -> Milestone:
        try:
            return self.tta_milestones[(family, line, int(iteration))]
        except KeyError:
            raise KeyError(
                f"no evaluation with test-time augmentation of family {family}, line {line} at "
                f"iteration {iteration} (only final checkpoints of runs with test_aug)"
            ) from None

    @cached_property
    def line_milestones(self) -> dict[tuple[str, str], list[Milestone]]:
        """(family, line) -> its milestones, by iteration."""
        out: dict[tuple[str, str], list[Milestone]] = {key: [] for key in self.lines}
        for m in sorted(self.milestones.values(), key=lambda m: m.iteration):
            out[(m.family, m.line)].append(m)
        return out

    def final_segment(self, run_id: str) -> Segment:
        """The segment that ends a run: its output is the run's kept model."""
        return self.segments_of_run(run_id)[-1]

    def runs_through(self, family: str, line: str, iteration: int) -> tuple[str, ...]:
        """The runs whose curve passes through the checkpoint at (family, line, iteration): on the
        trunk, every member not yet past its branch point; on any other line, its own run."""
        members = self.grid.families.get(family, [])
        if line == TRUNK:
            return tuple(sorted(r.run_id for r in members if 0 < iteration <= r.schedule.first_drop))
        return tuple(sorted(r.run_id for r in members if r.schedule_name == line and 0 < iteration <= r.iterations))

    def segments_of_run(self, run_id: str) -> list[Segment]:
        """The segments that, in order, train this run from iteration 0 to its end."""
        run = self.run(run_id)
        out = []
        for line, a, b in self.run_lines[run_id]:
            out += sorted(
                (s for s in self.segments.values() if s.family == run.family and s.line == line and a < s.end <= b),
                key=lambda s: s.end,
            )
        return out

    def milestones_of_run(self, run_id: str) -> list[Milestone]:
        return sorted((m for m in self.milestones.values() if run_id in m.runs), key=lambda m: m.iteration)

    def final_milestone(self, run_id: str) -> Milestone:
        return self.milestones_of_run(run_id)[-1]

    @cached_property
    def trained_iterations(self) -> dict[str, int]:
        """What each run adds to the plan: the trunk between the previous member's branch point
        and its own, plus its tail. Summed over runs, it is the plan's total."""
        out: dict[str, int] = {}
        for members in self.grid.families.values():
            if len(members) == 1:
                out[members[0].run_id] = members[0].iterations
                continue
            prev = 0
            for run in sorted(members, key=lambda r: (r.schedule.first_drop, r.iterations)):
                b = run.schedule.first_drop
                out[run.run_id] = (b - prev) + (run.iterations - b)
                prev = b
        return out

    def payer(self, family: str, line: str, iteration: int) -> str:
        """The run that `trained_iterations` charges with training up to `iteration` on this line:
        on a trunk, the member whose branch point is the first at or after it; else the line's owner."""
        if line != TRUNK:
            return self.lines[(family, line)].owner
        members = sorted(self.grid.families[family], key=lambda r: (r.schedule.first_drop, r.iterations))
        return next((r.run_id for r in members if r.schedule.first_drop >= iteration), members[-1].run_id)

    @property
    def total_iterations(self) -> int:
        return sum(s.iterations for s in self.segments.values())

    @property
    def standalone_iterations(self) -> int:
        return sum(r.iterations for r in self.grid.runs.values())
