# over 400 lines: the fuzzer's strategies and its two checks, one tool for test_fuzz_config.py and bench/fuzz.py
"""The config fuzzer's parts, shared by tests/test_fuzz_config.py (a bounded, seeded run in CI) and
bench/fuzz.py (the long campaign): Hypothesis strategies that mutate configs/tiny.yaml or config.yaml
and the way the result reaches Snakemake (one file, two layered files, `--config`, a profile), and the
two checks of one example:

- `in_process`: what rules/common.smk runs on what Snakemake loaded (Snakemake's own loader and
  merge, then rethink.sources.explained, Plan, Paths, report targets, JobResources), and what every job later runs on
  the config snapshot (rethink.jobs.load and each job's spec), in this process: milliseconds.
- `real`: the real `snakemake -n` on the same files and arguments: seconds.

Each returns an Outcome: "accepted", "refused" (a message naming the source, the field), "loader"
(refused by Snakemake's own config loader before the workflow runs: README, "Bad input"),
"loader-crash" (Snakemake's loader itself failing on a YTE template, before the workflow runs) or a failure
("traceback", "unclear", "hang", "late", "stray-file", "mismatch")."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import yaml
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]

BASES = {
    name: yaml.safe_load((ROOT / rel).read_text())
    for name, rel in (("tiny", "configs/tiny.yaml"), ("paper", "config.yaml"))
}
FAILURES = ("traceback", "unclear", "hang", "late", "stray-file", "mismatch")
TMP = "{TMP}"  # replaced by the example's own folder (absolute paths stay inside it)

# ------------------------------------------------------------------ values
PATHS = [
    "",
    " ",
    "/",
    "//",
    ".",
    "..",
    "../..",
    "~",
    "~/x",
    "a b",
    "w d/$(touch PWNED)",
    "`touch PWNED`",
    "x'y\"z",
    "work\nother",
    "tab\there",
    "nul\x00",
    "é/名前",
    "\u202eevil",
    f"{TMP}/abs dir",
    f"{TMP}/a_file",
    "work/../../..",
    "-rf",
    "--help",
    "C:\\work",
    "results/tiny",
    "work/tiny",
    "x" * 300,
]
SCALARS = st.one_of(
    st.integers(-(10**6), 10**6),
    st.sampled_from([0, -1, 1, 2, 3, 2**31, 2**63, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 1e-300, 1e300, 0.5]),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(
        [
            "R99",
            "GN",
            "BN",
            "SyncBN",
            "R18",
            "R50",
            "2x",
            "3x",
            "random",
            "imagenet",
            "synthetic",
            "coco",
            "voc",
            "mask_rcnn",
            "faster_rcnn",
            "keypoint_rcnn",
            "1e3",
            "yes",
            "no",
            "null",
            "true",
            "0x10",
            "1_000",
            ".inf",
            "3x3",
            "{a: 1}",
            "[1, 2]",
            "*alias",
            "&anchor",
            "!!python/none",
        ]
    ),
    st.sampled_from(PATHS),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-3, 3)), inner, max_size=3),
    ),
    max_leaves=6,
)


def paths_of(node, prefix=()):
    """Every path of keys and list indices in a config tree, the root's children first."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        out += paths_of(v, prefix + (k,))
    return out


def _get(cfg, path):
    for p in path:
        cfg = cfg[p]
    return cfg


def _misspell(draw, key: str) -> str:
    if not key:
        return "x"
    i = draw(st.integers(0, len(key) - 1))
    how = draw(st.sampled_from(["drop", "double", "swap", "upper", "dash", "plural"]))
    if how == "drop":
        return key[:i] + key[i + 1 :] or key + "_"
    if how == "double":
        return key[:i] + key[i] + key[i:]
    if how == "swap" and i + 1 < len(key):
        return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    if how == "upper":
        return key.upper()
    if how == "dash":
        return key.replace("_", "-") if "_" in key else key + "-"
    return key + "s"


def _number_mutation(draw, value):
    return draw(
        st.sampled_from(
            [
                0,
                -value,
                value * 10 ** draw(st.integers(1, 12)),
                value + 0.5,
                float("nan"),
                float("inf"),
                -1,
                str(value),
                [value],
                None,
                True,
            ]
        )
    )


# what mutation does to a value, drawn with these weights (a plausible nudge most often)
OPS = ["set", "set", "delete", "misspell", "unknown", "number", "list", "type", "nudge", "nudge", "nudge", "nudge"]


@st.composite
def mutation(draw, cfg: dict):
    """Apply one mutation to `cfg` in place; returns its description."""
    paths = paths_of(cfg)
    path = draw(st.sampled_from(paths)) if paths else ()
    parent = _get(cfg, path[:-1]) if path else cfg
    key = path[-1] if path else None
    op = draw(st.sampled_from(OPS))
    if not path:
        op = "unknown"
    value = parent[key] if path else None
    if op == "delete":
        del parent[key]
    elif op == "set":
        parent[key] = draw(VALUES)
    elif op == "misspell" and isinstance(key, str):
        parent[_misspell(draw, key)] = parent.pop(key)
    elif op == "unknown":
        target = parent if isinstance(parent, dict) else cfg
        target[
            draw(st.one_of(st.text(min_size=1, max_size=10), st.sampled_from(["eval_perod", "recipie", "seed"])))
        ] = draw(VALUES)
    elif op == "nudge":  # a plausible edit, mostly accepted: a number a little off, a list reordered or cut
        if isinstance(value, bool) or value is None:
            parent[key] = not value
        elif isinstance(value, int):
            parent[key] = (
                max(0, value + draw(st.integers(-2, 3))) if value < 10 else value * draw(st.sampled_from([1, 2, 3]))
            )
        elif isinstance(value, float):
            parent[key] = value * draw(st.sampled_from([0.5, 0.9, 1.1, 2.0]))
        elif isinstance(value, list) and value:
            parent[key] = draw(st.permutations(value))[: draw(st.integers(1, len(value)))]
        elif isinstance(value, dict) and len(value) > 1:
            del value[draw(st.sampled_from(sorted(value, key=str)))]
        elif isinstance(value, str):
            parent[key] = value + draw(st.sampled_from(["", " ", "2", "/x", " y"]))
    elif op == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        parent[key] = _number_mutation(draw, value)
    elif op == "list" and isinstance(value, list):
        how = draw(st.sampled_from(["empty", "huge", "duplicate", "nested"]))
        huge = (value[:100] * draw(st.sampled_from([50, 2000])))[:5000]  # one huge list, not a huge list of them
        parent[key] = (
            [] if how == "empty" else huge if how == "huge" else value + value[:1] if how == "duplicate" else [value]
        )
    else:  # the value's type changes
        parent[key] = draw(st.sampled_from([str(value), [value], {"value": value}, None, 1, 1.5, True]))
    return f"{op} {'.'.join(map(str, path))}"


@dataclass
class Example:
    """A config as it reaches Snakemake: files (name -> text), a profile, `--config` entries."""

    base: str
    mutations: list[str]
    files: dict[str, str]
    configfiles: list[str]
    cli: list[str] = field(default_factory=list)
    profile: dict | None = None

    def __str__(self) -> str:
        return (
            f"base {self.base}; {'; '.join(self.mutations)}; configfiles {self.configfiles}; --config {self.cli}; "
            f"profile {self.profile}\n" + "\n".join(f"--- {n}:\n{t[:1500]}" for n, t in self.files.items())
        )

    def write(self, folder: Path) -> list[str]:
        """Write the files under `folder`; returns Snakemake's arguments."""
        for name, text in self.files.items():
            (folder / name).write_text(text.replace(TMP, str(folder)))
        (folder / "a_file").write_text("a file where a folder may be asked for\n")
        args = []
        if self.profile is not None:
            (folder / "prof").mkdir(exist_ok=True)
            prof = {k: ([str(folder / f) for f in v] if k == "configfile" else v) for k, v in self.profile.items()}
            (folder / "prof" / "config.yaml").write_text(yaml.safe_dump(prof).replace(TMP, str(folder)))
            args += ["--profile", str(folder / "prof")]
        if self.configfiles:
            args += ["--configfile", *(str(folder / f) for f in self.configfiles)]
        if self.cli:
            args += ["--config", *(c.replace(TMP, str(folder)) for c in self.cli)]
        return args


def _dump(cfg) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=1000)


_IDENT = re.compile(r"[a-zA-Z_][\w-]*\w$")  # what Snakemake takes as a --config key


@st.composite
def examples(draw, bases=("tiny", "paper")):
    base = draw(st.sampled_from(bases))
    cfg = copy.deepcopy(BASES[base])
    muts = [draw(mutation(cfg)) for _ in range(draw(st.integers(1, 3)))]
    how = draw(st.sampled_from(["file", "file", "layered", "cli", "profile", "text"]))
    if not isinstance(cfg, dict) or not cfg:
        return Example(base, muts, {"c.yaml": _dump(cfg)}, ["c.yaml"])
    keys = list(cfg)
    if how == "layered":
        top = draw(st.lists(st.sampled_from(keys), unique=True, max_size=len(keys)))
        over = {k: cfg[k] for k in top}
        under = copy.deepcopy(BASES[base])
        for k in keys:  # keys the mutation removed or renamed stay as they were in the lower file
            if k not in top and k in under:
                under[k] = cfg[k]
        under = {k: v for k, v in under.items() if k in cfg or k not in keys}
        return Example(
            base, muts + [f"layered over {top}"], {"a.yaml": _dump(under), "b.yaml": _dump(over)}, ["a.yaml", "b.yaml"]
        )
    if how in ("cli", "profile"):
        movable = [k for k in keys if isinstance(k, str) and _IDENT.match(k)]
        moved = draw(st.lists(st.sampled_from(movable), unique=True, min_size=1, max_size=2)) if movable else []
        entries = [f"{k}={json.dumps(cfg[k], allow_nan=True)}" for k in moved]
        rest = {k: v for k, v in cfg.items() if k not in moved}
        files = {"c.yaml": _dump(rest)}
        if how == "cli":
            return Example(base, muts + [f"--config {moved}"], files, ["c.yaml"], cli=entries)
        return Example(
            base, muts + [f"profile config: {moved}"], files, [], profile={"configfile": ["c.yaml"], "config": entries}
        )
    text = _dump(cfg)
    if how == "text":
        edit = draw(st.sampled_from(["duplicate", "yte", "tab", "truncate", "empty", "list", "bom", "json"]))
        if edit == "duplicate":
            k = draw(st.sampled_from(keys))
            text += _dump({k: cfg[k]})
        elif edit == "yte":
            text = "__use_yte__: true\n" + text
        elif edit == "tab":
            text = text.replace("\n  ", "\n\t", 1)
        elif edit == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
        elif edit == "empty":
            text = ""
        elif edit == "list":
            text = "- " + text.replace("\n", "\n  ")
        elif edit == "bom":
            text = "\ufeff" + text
        else:
            text = json.dumps(cfg, allow_nan=True)
        muts.append(f"text: {edit}")
    return Example(base, muts, {"c.yaml": text}, ["c.yaml"])


# ------------------------------------------------------------------ checks
@dataclass
class Outcome:
    kind: str  # accepted, refused, loader, or one of FAILURES
    message: str = ""

    @property
    def failed(self) -> bool:
        return self.kind in FAILURES


def _sources(example: Example, folder: Path) -> list[str]:
    out = [str(folder / f) for f in example.configfiles]
    if example.profile is not None:
        out += [str(folder / f) for f in example.profile["configfile"]] + [str(folder / "prof" / "config.yaml")]
    return out + ["--config"]


def clear(message: str, sources: list[str]) -> bool:
    """A refusal that names where (a file, the profile or --config) and what (`where: field...`)."""
    if "Traceback" in message or 'File "' in message:
        return False
    return any(re.search(re.escape(s) + r"[^\n]*?: \S", message) for s in sources)


def in_process(example: Example, folder: Path) -> Outcome:
    """What Snakemake and rules/common.smk do with the example's files, then what every job does with
    the config snapshot; in this process."""
    from rethink import jobs as rjobs
    from rethink import report_targets
    from rethink import sources as rsources
    from rethink.config import ConfigError
    from rethink.paths import Paths
    from rethink.plan import Plan
    from rethink.resources import JobResources

    args = example.write(folder)
    loaded = _snakemake_loads(example, folder)
    if isinstance(loaded, Outcome):
        return loaded
    config, cli, files = loaded
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        config.pop("confirm_rerun", None)
        try:
            cfg, grid, source = rsources.explained(config, cli, files, ROOT, argv=["-n", *args])
        except ConfigError as e:
            msg = str(e)
            return Outcome("refused" if clear(msg, _sources(example, folder)) else "unclear", msg)
        plan = Plan(grid)
        paths = Paths(cfg, plan)
        job_resources = JobResources(cfg, plan)
        report_targets.final_targets(paths)
        rjobs.write_snapshot(cfg, source, write=False)
        snap = folder / "snapshot.json"
        snap.write_text(json.dumps({"format": rjobs.SNAPSHOT_FORMAT, "source": source, "config": cfg}))
        try:
            _every_job(snap, plan, job_resources)
        except Exception as e:  # noqa: BLE001  (any error here is a failure to report)
            return Outcome("late", f"{type(e).__name__}: {e}")
        return Outcome("accepted")
    except Exception as e:  # noqa: BLE001
        import traceback

        return Outcome("traceback", "".join(traceback.format_exception(e))[-3000:])
    finally:
        os.chdir(cwd)


def _snakemake_loads(example: Example, folder: Path) -> tuple[dict, dict, list[str]] | Outcome:
    """Snakemake's part: read each file, merge, parse --config (snakemake.settings.types.ConfigSettings);
    (config, the --config entries, the files), or the loader's refusal or crash."""
    from snakemake.cli import parse_config
    from snakemake.common.configfile import load_configfile
    from snakemake.utils import update_config
    from snakemake_interface_common.exceptions import WorkflowError

    files = [str(folder / f) for f in example.configfiles]
    entries = [c.replace(TMP, str(folder)) for c in example.cli]
    if example.profile is not None:
        files = [str(folder / f) for f in example.profile["configfile"]]
        entries = example.profile["config"] if not entries else entries
    try:
        config = {}
        for f in files:
            update_config(config, load_configfile(f))
        cli = parse_config(entries)
        update_config(config, cli)
    except WorkflowError as e:
        return Outcome("loader", str(e))
    except Exception as e:  # noqa: BLE001  (Snakemake's loader failing before the workflow runs: README)
        return Outcome("loader-crash", f"{type(e).__name__}: {e}")
    return config, cli, files


def _every_job(snap: Path, plan, job_resources) -> None:
    """Later: each job rebuilds the plan from the snapshot `snap` (JSON) and takes its spec from it;
    and what Snakemake asks of each job while planning: its resources (callables of its wildcards)."""
    from rethink import jobs as rjobs

    specs = rjobs.load(str(snap))
    keys = [f"prepare_data/{d}" for d in sorted({r.data for r in plan.grid.runs.values()})]
    keys += [f"train_segment/{f}/{ln}/{it}" for f, ln, it in list(plan.segments)[:20]]
    keys += [f"evaluate/{f}/{ln}/{it}" for f, ln, it in list(plan.milestones)[:20]]
    for k in keys:
        rjobs.spec(specs, k)
    train, ev = job_resources.train_resources(), job_resources.eval_resources()
    job_resources.launchers(sys.executable)
    job_resources.single(sys.executable)
    for f, ln, it in list(plan.segments)[:20] + list(plan.milestones)[:20]:
        wc = SimpleNamespace(family=f, line=ln, iter=str(it))
        for res in (train if (f, ln, it) in plan.segments else ev).values():
            if callable(res):
                res(wc, 3) if res.__code__.co_argcount == 2 else res(wc)


LOADER_MESSAGES = (
    "Config file is not valid JSON or YAML",
    "Config file must be given as JSON or YAML with keys at top level",
)


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def real(example: Example, folder: Path, timeout: float = 300) -> Outcome:
    """The real `snakemake -n` on the example, in `folder` (a fresh, empty one)."""
    args = example.write(folder)
    before = _listing(folder)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(folder),
        "-n",
        *args,
    ]
    try:
        proc = subprocess.run(
            cmd, cwd=folder, capture_output=True, text=True, timeout=timeout, preexec_fn=_limit_memory
        )
    except subprocess.TimeoutExpired:
        return Outcome("hang", f"no answer in {timeout} s")
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        new = {p for p in _listing(folder) - before if not p.startswith(".snakemake")}
        cfg = None
        try:
            cfg = _effective(example, folder)
        except Exception:  # noqa: BLE001
            pass
        roots = [str(Path(cfg[k])) for k in ("workdir", "results")] if isinstance(cfg, dict) else []
        stray = [
            p
            for p in new
            if not any(p == r or p.startswith(r.rstrip("/") + "/") or r in (".", "") for r in roots)
            and not any(r.startswith(p + "/") for r in roots)
        ]
        if stray:
            return Outcome("stray-file", f"written outside workdir and results: {sorted(stray)[:5]}")
        return Outcome("accepted", out[-500:])
    if proc.returncode == 1 and any(m in out for m in LOADER_MESSAGES):
        return Outcome("loader", out[-500:])
    if "Traceback" in out and "snakemake/common/configfile.py" in out and "rules/common.smk" not in out:
        return Outcome("loader-crash", out[-1500:])
    if "Traceback" in out or 'File "' in out:
        return Outcome("traceback", out[-3000:])
    if proc.returncode == 1 and clear(out, _sources(example, folder)):
        return Outcome("refused", out[-20000:])
    return Outcome("unclear", f"rc {proc.returncode}\n{out[-2000:]}")


def _effective(example: Example, folder: Path) -> dict:
    """workdir and results as the accepted config has them (relative to `folder`)."""
    from rethink import config as rconfig

    files = example.configfiles or (example.profile or {}).get("configfile", [])
    cfg = {}
    for f in files:
        cfg.update(yaml.safe_load((folder / f).read_text()) or {})
    for entry in example.cli or (example.profile or {}).get("config", []):
        k, v = entry.split("=", 1)
        cfg[k] = yaml.safe_load(v)
    out = {k: cfg.get(k, rconfig.load_schema()["properties"][k].get("default", "")) for k in ("workdir", "results")}
    return {k: os.path.relpath(os.path.join(folder, v.replace(TMP, str(folder))), folder) for k, v in out.items()}


def _limit_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a memory blow-up fails instead of swapping


def run_one(example: Example, with_real: bool) -> tuple[Outcome, Outcome | None, float]:
    """Both checks of one example, in one fresh folder; a real outcome that differs from the
    in-process one, or a refusal whose first line differs, is a "mismatch"."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuzzcfg-") as tmp:
        inner = Path(tmp) / "a" / "b" / "c"  # `..` in a path stays inside the scratch folder
        inner.mkdir(parents=True)
        got = in_process(example, inner)
        if got.kind == "accepted" and time.monotonic() - t0 > 60:
            got = Outcome("hang", f"{time.monotonic() - t0:.0f} s in process")
        if not with_real:
            return got, None, time.monotonic() - t0
        (inner / "snapshot.json").unlink(missing_ok=True)
        rl = real(example, inner)
    first = [ln.strip() for ln in got.message.splitlines() if ln.strip() not in ("", "invalid configuration")]
    if not rl.failed and (rl.kind != got.kind or (got.kind == "refused" and first[0] not in rl.message)):
        rl = Outcome("mismatch", f"in process: {got.kind}: {got.message[:1500]}\nreal: {rl.kind}: {rl.message[-1500:]}")
    return got, rl, time.monotonic() - t0
