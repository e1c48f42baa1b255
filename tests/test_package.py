"""The project's code is an installed package (pyproject.toml): `rethink` and the tests' laboratory
`rethink_lab` import from any folder, nothing reaches them through sys.path, and the README's
layout names every module."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib

from conftest import ROOT

PKG = ROOT / "workflow_scripts" / "rethink"
LAB = ROOT / "tests" / "lab"


def test_the_packages_import_from_any_folder(tmp_path):
    code = "import rethink, rethink.engines, rethink_lab; print(rethink.__file__); print(rethink_lab.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env={})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(PKG / "__init__.py"), str(LAB / "__init__.py")]


def test_snakemake_finds_the_profiles_executor_from_any_folder(tmp_path):
    """profiles/slurm's `executor: slurm-direct` (workflow_scripts/slurm_direct, a project of its own):
    Snakemake lists executor plugins with pkgutil.iter_modules, which sees a folder on sys.path but not
    an editable install's import hook (what `rethink` has)."""
    code = (
        "from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry as R; "
        "p = R().get_plugin('slurm-direct'); import sys; print(sys.modules[p.executor.__module__].__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env={})
    assert out.returncode == 0, out.stderr
    direct = ROOT / "workflow_scripts" / "slurm_direct"
    assert out.stdout.strip() == str(direct / "snakemake_executor_plugin_slurm_direct" / "__init__.py")
    assert "slurm_direct" in (ROOT / "Makefile").read_text()  # `make install` installs it
    profile = (ROOT / "profiles" / "slurm" / "profile.yaml").read_text()
    assert re.search(r"^executor: slurm-direct\b", profile, re.M)
    # every plugin option of the profile is one slurm-direct has (the SLURM plugin's, renamed)
    assert not re.search(r"^slurm-(?!direct-)", profile, re.M)


def test_slurm_direct_caps_the_wait_between_status_checks():
    """The SLURM executor waits 10 s longer after each status check that saw no job end, up to 180 s;
    slurm-direct's max_seconds_between_status_checks caps that (the lab's FAST_POLL: 1 s)."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm_direct import Executor, ExecutorSettings

    ex = object.__new__(Executor)  # (its __init__ starts the status thread: only the wait is tested)
    ex._next_seconds_between_status_checks = None
    polling = SimpleNamespace(seconds_between_status_checks=1)
    ex.workflow = SimpleNamespace(executor_settings=ExecutorSettings(max_seconds_between_status_checks=5))
    ex.workflow.remote_execution_settings = polling
    assert ex.next_seconds_between_status_checks == 1
    ex.next_seconds_between_status_checks = 40
    assert ex.next_seconds_between_status_checks == 5
    ex.workflow.executor_settings = ExecutorSettings()  # the SLURM executor's own cap stays
    ex.next_seconds_between_status_checks = 170
    assert ex.next_seconds_between_status_checks == 170
    assert ExecutorSettings().max_seconds_between_status_checks == 180


def test_pyproject_installs_every_package_folder():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {"rethink": "workflow_scripts/rethink", "rethink_lab": "tests/lab"}
    found = {
        "rethink." + ".".join(p.parent.relative_to(PKG).parts) if p.parent != PKG else "rethink"
        for p in PKG.rglob("__init__.py")
    } | {"rethink_lab"}
    assert sorted(tool["packages"]) == sorted(found)


def _path_edits(path) -> list[int]:
    """Lines of `path` that change sys.path (insert, append, assignment, remove), in code or in
    the code strings it runs."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        target = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            target = target.value if isinstance(target, ast.Subscript) else target
        if isinstance(target, ast.Attribute) and target.attr == "path" and getattr(target.value, "id", "") == "sys":
            if not isinstance(node, ast.Call) or node.func.attr in ("insert", "append", "remove", "extend"):
                lines.append(node.lineno)
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.search(r"sys\.path\.(insert|append)|sys\.path\[\d\] *=", node.value)
        ):
            lines.append(node.lineno)
    return lines


def test_no_sys_path_manipulation_in_scripts_benchmarks_or_tests():
    files = [
        p
        for d in ("workflow_scripts", "bench", "tests")
        for p in sorted((ROOT / d).rglob("*.py"))
        if p.name != "test_package.py"
    ]  # (its probes)
    found = {str(p.relative_to(ROOT)): _path_edits(p) for p in files}
    assert not {k: v for k, v in found.items() if v}


def test_the_checker_finds_path_edits(tmp_path):
    for text in (
        "import sys\nsys.path.insert(0, 'x')\n",
        "import sys\nsys.path[0] = 'x'\n",
        "code = 'import sys; sys.path.insert(0, 1)'\n",
        "import sys\nsys.path += ['x']\n",
    ):
        (tmp_path / "probe.py").write_text(text)
        assert _path_edits(tmp_path / "probe.py"), text
    (tmp_path / "probe.py").write_text("import sys\nprint(sys.path[0])\n")
    assert not _path_edits(tmp_path / "probe.py")


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", layout))
    modules = {p.stem for p in PKG.rglob("*.py") if p.stem != "__init__"}
    modules |= {p.stem for p in (ROOT / "workflow_scripts").glob("*.py")}
    assert sorted(modules - words) == []
