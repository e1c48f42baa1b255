"""The package's modules import one way: no cycle, counting imports inside functions too (a lazy
import only hides a cycle until someone moves it). And the engines' room (rethink.engines): an
engine's modules are reached from outside it only through get_engine, no engine imports another's,
and what both build alike (engines/shared.py) imports no engine."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT
from rethink.engines import ENGINES

PKG = ROOT / "workflow_scripts" / "rethink"


def module_name(path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path, modules: set[str]) -> set[str]:
    """The package modules `path` imports, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:  # `from . import x` imports the module x
                if f"{target}.{a.name}" in modules:
                    out.add(f"{target}.{a.name}")
                elif target in modules:
                    out.add(target)
    out.discard(name)
    return out


def package_graph(scripts: bool = False) -> dict[str, set[str]]:
    """Package module -> the package modules it imports; with `scripts`, the workflow's scripts
    (workflow_scripts/*.py, what the rules run) too."""
    files = sorted(PKG.rglob("*.py"))
    modules = {module_name(f) for f in files}
    if scripts:
        files += sorted(PKG.parent.glob("*.py"))
    return {module_name(f): imports_of(f, modules) for f in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    graph = package_graph()
    assert {"rethink.loop", "rethink.engines", "rethink.engines.torchvision_engine"} <= set(graph)
    assert "rethink.checkpoint" in graph["rethink.engines.torchvision_engine"]  # imports are seen
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_files_identities_and_job_specs_build_on_each_other_one_way():
    """Where files are (paths) knows no identity and no spec; the identity files know no spec; the
    specs build on both."""
    graph = package_graph()
    assert not reachable(graph, "rethink.paths") & {"rethink.identity", "rethink.identity_files", "rethink.job_specs"}
    assert "rethink.job_specs" not in reachable(graph, "rethink.identity_files")
    assert {"rethink.paths", "rethink.identity"} <= graph["rethink.identity_files"]
    assert {"rethink.paths", "rethink.identity_files"} <= graph["rethink.job_specs"]


# ---------------------------------------------------------------------------- the engines' room
ENGINES_PKG = "rethink.engines"
NEUTRAL = {ENGINES_PKG, f"{ENGINES_PKG}.shared"}  # get_engine and the interface; what both engines build alike
KNOWN = (*ENGINES, "rehearsal")
# Outside rethink.engines an engine's module is imported only here, each for its reason:
EXCEPTIONS = {
    (
        "rethink.pretrain",
        "rethink.engines.torchvision_models",
    ): "the tiny pre-training trains the torchvision ResNet/VGG16 body, whichever engine the detector uses",
    (
        "rethink.stage",
        "rethink.engines.detectron2_config",
    ): "the staging converts torchvision's VGG16 into the caffe blobs and input normalisation of the "
    "detectron2 engine's VGG16",
}


def engine_of(module: str) -> str | None:
    """The engine a module of rethink.engines belongs to: its name's prefix (torchvision_*,
    detectron2_*, rehearsal_*); None for the engine-neutral ones and for modules outside."""
    if not module.startswith(ENGINES_PKG + "."):
        return None
    prefix = module.rsplit(".", 1)[1].split("_", 1)[0]
    return prefix if prefix in KNOWN else None


def engine_room_breaches(graph: dict[str, set[str]], exceptions=EXCEPTIONS) -> list[str]:
    """Imports of an engine's module that the room forbids: from another engine, from an
    engine-neutral module, or from outside rethink.engines (except get_engine's own lazy imports and
    `exceptions`)."""
    out = []
    for m, deps in sorted(graph.items()):
        for d in sorted(deps):
            target = engine_of(d)
            if target is None or m == ENGINES_PKG:
                continue
            own = engine_of(m)
            if own is not None and own != target:
                out.append(f"{m} (engine {own}) imports {d} (engine {target}): share it through engines/shared.py")
            elif own is None and m.startswith(ENGINES_PKG + "."):
                out.append(f"{m} (engine-neutral) imports {d} (engine {target})")
            elif own is None and (m, d) not in exceptions:
                out.append(f"{m} imports {d}: reach engine {target} through rethink.engines.get_engine")
    return out


def test_the_checker_finds_a_breach_of_the_engines_room():
    graph = {
        "rethink.engines": {"rethink.engines.torchvision_engine"},  # get_engine: allowed
        "rethink.evaluate": {"rethink.engines", "rethink.engines.shared", "rethink.engines.detectron2_config"},
        "rethink.engines.torchvision_engine": {"rethink.engines.detectron2_config", "rethink.checkpoint"},
        "rethink.engines.shared": {"rethink.engines.rehearsal_engine"},
        "rethink.pretrain": {"rethink.engines.torchvision_models"},
    }
    assert engine_room_breaches(graph) == [
        "rethink.engines.shared (engine-neutral) imports rethink.engines.rehearsal_engine (engine rehearsal)",
        "rethink.engines.torchvision_engine (engine torchvision) imports rethink.engines.detectron2_config "
        "(engine detectron2): share it through engines/shared.py",
        "rethink.evaluate imports rethink.engines.detectron2_config: reach engine detectron2 through "
        "rethink.engines.get_engine",
    ]
    assert engine_room_breaches(graph, exceptions={})[-1].startswith("rethink.pretrain imports")


def test_engines_are_reached_through_get_engine():
    graph = package_graph(scripts=True)
    inside = sorted(m for m in graph if m.startswith(ENGINES_PKG + "."))
    unplaced = [m for m in inside if m not in NEUTRAL and engine_of(m) is None]
    assert not unplaced, f"engines/ modules neither an engine's (prefix {', '.join(KNOWN)}) nor neutral: {unplaced}"
    assert {engine_of(m) for m in inside} - {None} == set(KNOWN)
    breaches = engine_room_breaches(graph)
    assert not breaches, "the engines' room is breached:\n" + "\n".join(breaches)
    stale = [pair for pair in EXCEPTIONS if pair[1] not in graph.get(pair[0], set())]
    assert not stale, f"exceptions no module needs any more (remove them): {stale}"
    assert "rethink.engines" in graph["warm"] and "rethink.engines" in graph["rethink.segment"]  # scripts are seen


def test_the_engine_interface_imports_no_torch():
    """rethink.engines (get_engine, the interface) and engines/shared.py are what the planning and
    the rules may import: no torch, no detectron2."""
    code = (
        "import sys; import rethink.engines, rethink.engines.shared; "
        "print(sorted(m for m in ('torch', 'detectron2', 'torchvision') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=PKG.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def engine_calls() -> set[str]:
    """The methods the package calls on an engine outside rethink.engines: `engine.x(...)`,
    `<obj>.engine.x(...)`, and hasattr/getattr(engine, "x")."""

    def is_engine(node) -> bool:
        return (isinstance(node, ast.Name) and node.id == "engine") or (
            isinstance(node, ast.Attribute) and node.attr == "engine"
        )

    out = set()
    for path in PKG.rglob("*.py"):
        if module_name(path).startswith(ENGINES_PKG):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and is_engine(node.func.value):
                out.add(node.func.attr)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
                and is_engine(node.args[0])
                and isinstance(node.args[1], ast.Constant)
            ):
                out.add(node.args[1].value)
    return out


def interface_methods(protocol) -> dict:
    import inspect

    return {n: inspect.signature(f) for n, f in vars(protocol).items() if inspect.isfunction(f) and n[0] != "_"}


def fits(method, spec) -> bool:
    """`method` (bound) takes the interface's parameters, by name and in order; any more have defaults."""
    import inspect

    want = [p for p in spec.parameters if p != "self"]
    have = list(inspect.signature(method).parameters.values())
    return [p.name for p in have[: len(want)]] == want and all(p.default is not p.empty for p in have[len(want) :])


def test_the_engine_interface_is_complete_and_kept():
    """Every method the workflow calls on an engine is in the interface (rethink.engines.Engine or
    OptionalEngineMethods), and every engine has each of Engine's, with its parameters."""
    from rethink.engines import Engine, OptionalEngineMethods, get_engine
    from rethink.pretrain import ClassificationTask

    required, optional = interface_methods(Engine), interface_methods(OptionalEngineMethods)
    called = engine_calls()
    assert {"build_model", "losses", "count", "predict", "iterations_in"} <= called  # the calls are seen
    assert called <= set(required) | set(optional), (
        f"called but not in the interface: {called - set(required) - set(optional)}"
    )
    for name in KNOWN:
        engine = get_engine(name)
        for method, spec in required.items():
            assert fits(getattr(engine, method), spec), f"engine {name}: {method} is not {spec}"
        for method, spec in optional.items():
            assert not hasattr(engine, method) or fits(getattr(engine, method), spec), f"engine {name}: {method}"
    task = ClassificationTask()  # the pre-training: the training half (no start_task, no evaluation)
    for method in ("build_model", "load_init_weights", "train_stream", "losses", "count"):
        assert fits(getattr(task, method), required[method]), method
