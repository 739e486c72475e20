"""The hand-written lists of ``bench/path_to_loss.py`` against the code, and the path's size budget."""

from __future__ import annotations

import ast

import pytest

from bench.path_to_loss import ONE_CALL_AWAY, PATH, REPO_ROOT, lines


def _module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def _imported_modules(path: str) -> set[str]:
    """Project modules ``path`` imports (``from a.b import c`` counts a.b and a.b.c; relative imports resolved)."""
    package = _module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse((REPO_ROOT / path).read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _defined_names(path: str) -> set[str]:
    tree = ast.parse((REPO_ROOT / path).read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_the_path_stays_within_ten_modules_and_two_thousand_lines() -> None:
    total = sum(lines(m) for m in PATH)
    assert len(PATH) <= 10 and total <= 2000, f"{len(PATH)} modules, {total} lines: move plumbing off the path"


@pytest.mark.parametrize("module", sorted(ONE_CALL_AWAY))
def test_each_module_one_call_away_is_reached_from_the_path_by_the_named_call(module: str) -> None:
    importers = [p for p in PATH if _module_name(module) in _imported_modules(p)]
    assert importers, f"no path module imports {module}: drop it from ONE_CALL_AWAY or fix the path"
    call = ONE_CALL_AWAY[module][0]
    named = [word for word in call.split(", ") if word.isidentifier()]
    assert set(named) <= _defined_names(module), f"{module} does not define {named}"


def test_every_listed_module_exists_and_none_is_listed_twice() -> None:
    assert not set(PATH) & set(ONE_CALL_AWAY)
    assert all((REPO_ROOT / m).is_file() for m in [*PATH, *ONE_CALL_AWAY])
