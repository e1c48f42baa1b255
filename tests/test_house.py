"""The house rules on size, read from the source with ast: no function over MAX_FUNCTION_LINES lines
and no module over MAX_MODULE_LINES lines without a one-line reason at its top.

Covered: every .py file under workflow_scripts/, bench/ and tests/. A test function (named test_*)
may be longer: it is one scenario, read top to bottom; the helpers beside it may not. A function's
length is its `def` line to its last line (ast: end_lineno - lineno + 1), nested functions counted
in the function that holds them and on their own.

The reason's form: a comment line in the module's first REASON_WITHIN lines (above its docstring)

    # over 400 lines: <why this module is one piece>

e.g. `# over 400 lines: one class, the Trainer, below a module docstring that is the loop's
specification`. A split where the module's vocabulary splits it is the first choice."""

from __future__ import annotations

import ast

from conftest import ROOT

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
REASON = "# over 400 lines:"
REASON_WITHIN = 5
FOLDERS = ("workflow_scripts", "bench", "tests")


def python_files() -> list:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def long_functions(path, root=ROOT) -> list[str]:
    """'path:line name (N lines)' of every function of `path` over MAX_FUNCTION_LINES, test_* aside
    (the path relative to `root`)."""
    rel = path.relative_to(root)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("test_"):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    return out


def reason_of(text: str) -> str | None:
    """The module's reason for its size (the text after `# over 400 lines:`), or None."""
    for line in text.splitlines()[:REASON_WITHIN]:
        if line.startswith(REASON) and line[len(REASON) :].strip():
            return line[len(REASON) :].strip()
    return None


def long_modules_without_reason(path) -> list[str]:
    text = path.read_text()
    n = len(text.splitlines())
    if n <= MAX_MODULE_LINES or reason_of(text):
        return []
    return [f"{path.relative_to(ROOT)} ({n} lines, no '{REASON} ...' line in its first {REASON_WITHIN})"]


def test_the_checks_find_what_they_look_for(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))  # def line + 60: 61 lines
    f = tmp_path / "m.py"
    f.write_text(f"def long():\n{body}\n\n\ndef test_long():\n{body}\n\n\ndef short():\n    pass\n")
    found = long_functions(f, tmp_path)
    assert found == ["m.py:1 long (61 lines)"], found
    assert reason_of("# over 400 lines: one class\n'''doc'''\n") == "one class"
    assert reason_of("'''doc'''\n# over 400 lines:\n") is None  # a reason says something
    assert reason_of("\n" * REASON_WITHIN + "# over 400 lines: too late\n") is None


def test_no_function_over_60_lines():
    found = [f for p in python_files() for f in long_functions(p)]
    assert not found, (
        f"{len(found)} function(s) over {MAX_FUNCTION_LINES} lines (cut them along their steps):\n  "
        + "\n  ".join(found)
    )


def test_no_module_over_400_lines_without_a_reason_at_its_top():
    found = [f for p in python_files() for f in long_modules_without_reason(p)]
    assert not found, (
        f"{len(found)} module(s) over {MAX_MODULE_LINES} lines: split them where their vocabulary "
        f"splits them, or give a one-line reason at the top ({REASON} ...):\n  " + "\n  ".join(found)
    )
