"""House rules that keep the code easy to map: every public name documented, no room too big."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kit.paths import ROOT

SOURCES = sorted(p for folder in ("zmqsec", "keys", "bridges") for p in (ROOT / folder).rglob("*.py"))
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 200


def _public_without_docstring(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    missing = [] if ast.get_docstring(tree) else ["<module>"]

    def walk(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not child.name.startswith("_"):
                if not ast.get_docstring(child):
                    missing.append(f"{prefix}{child.name} (line {child.lineno})")
                if isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")

    walk(tree, "")
    return missing


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_public_name_has_a_docstring(path):
    assert _public_without_docstring(path) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_or_class_is_too_big(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name} has {source.count(chr(10))} lines"
    big = [f"{node.name}: {node.end_lineno - node.lineno + 1} lines" for node in ast.walk(ast.parse(source))
           if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert big == []


def test_the_docstring_check_sees_a_missing_docstring(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""A module."""\n\n\nclass Thing:\n    """A thing."""\n\n    def act(self):\n        pass\n')
    assert _public_without_docstring(bad) == ["Thing.act (line 7)"]
