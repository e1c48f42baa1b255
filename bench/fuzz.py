"""The long fuzz campaign: configs and data sets nobody wrote by hand (issue: never a traceback).

    .venv/bin/python bench/fuzz.py --config-examples 5000 --real-every 50 --data-examples 2000

Config examples (tests/lab/fuzz_config.py) are mutations of configs/tiny.yaml and config.yaml, given as one
file, two layered files, `--config` or a profile; each goes through what a dry run does, in process,
and every `--real-every`-th through the real `snakemake -n` too (whose outcome must be the same).
Data examples (tests/lab/fuzz_data.py) are mutations of a small COCO set (JSON and image files) through
prepare_data's validation with on_bad_data error and skip; every `--train-every`-th accepted one
trains a step and evaluates. Prints examples tried, clear refusals, accepted, and failures by kind
(the goal is 0), with the first example of each failure kind. Seeded: the same command finds the
same examples. Run it at low priority on a shared machine: `nice -n 10 ...`.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

ROOT = Path(__file__).resolve().parents[1]


class Outcome:
    def __init__(self, kind, message):
        self.kind, self.message, self.failed = kind, message, True


def campaign(name, strategy, check, n: int, seed_: int, every: int) -> dict:
    """Draw `n` examples of `strategy` (seeded) and run `check(example, i)` on each; returns the counts."""
    counts: collections.Counter = collections.Counter()
    first: dict[str, str] = {}
    state = {"i": 0, "t0": time.monotonic()}

    @seed(seed_)
    @settings(
        max_examples=n, deadline=None, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
    )
    @given(strategy)
    def one(example):
        i = state["i"]
        state["i"] += 1
        try:
            outcomes = list(check(example, i))
        except Exception as e:  # noqa: BLE001  (the harness's own error: counted, the campaign goes on)
            outcomes = [("harness", Outcome("harness-error", f"{type(e).__name__}: {e}"))]
        for stage, outcome in outcomes:
            counts[f"{stage}:{outcome.kind}"] += 1
            if (outcome.failed or outcome.kind.endswith("error")) and f"{stage}:{outcome.kind}" not in first:
                first[f"{stage}:{outcome.kind}"] = f"{example}\n{outcome.message[-2500:]}"
        if every and state["i"] % every == 0:
            print(
                f"  {name}: {state['i']} examples, {time.monotonic() - state['t0']:.0f} s, "
                f"{dict(sorted(counts.items()))}",
                flush=True,
            )

    one()
    return {"tried": state["i"], "counts": counts, "first": first, "seconds": time.monotonic() - state["t0"]}


def report(name: str, res: dict, failures: tuple[str, ...]) -> int:
    counts = res["counts"]
    print(f"\n{name}: {res['tried']} examples in {res['seconds']:.0f} s")
    for key in sorted(counts):
        print(f"  {key:32s} {counts[key]}")
    failed = {k: v for k, v in counts.items() if k.split(":")[1] in (*failures, "harness-error")}
    print(f"  failures by kind: {failed or 0}")
    for key, text in res["first"].items():
        print(f"\n--- first {key}:\n{text}")
    return sum(failed.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config-examples", type=int, default=500)
    ap.add_argument(
        "--real-every", type=int, default=50, help="every Nth config example also runs snakemake -n (0: none)"
    )
    ap.add_argument("--data-examples", type=int, default=200)
    ap.add_argument(
        "--train-every", type=int, default=100, help="every Nth accepted data set trains a step and evaluates (0: none)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-gb", type=int, default=8, help="address-space limit of this process (RLIMIT_AS)")
    a = ap.parse_args()
    import resource

    # a memory blow-up is a failure to report (MemoryError), not a machine to bring down
    resource.setrlimit(resource.RLIMIT_AS, (a.memory_gb << 30, a.memory_gb << 30))
    bad = 0
    if a.config_examples:
        from rethink_lab import fuzz_config as fc

        def check(example, i):
            got, rl, _ = fc.run_one(example, with_real=bool(a.real_every) and i % a.real_every == 0)
            yield "in-process", got
            if rl is not None:
                yield "snakemake -n", rl

        res = campaign("config", fc.examples(), check, a.config_examples, a.seed, max(1, a.config_examples // 20))
        bad += report("config examples", res, fc.FAILURES)
    if a.data_examples:
        from rethink_lab import fuzz_data as fd

        with fd.Workspace() as ws:

            def check_data(example, i):
                yield from ws.run(example, train=bool(a.train_every) and i % a.train_every == 0)

            res = campaign("data", fd.examples(), check_data, a.data_examples, a.seed, max(1, a.data_examples // 20))
        bad += report("data examples", res, fd.FAILURES)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
