"""Habits kept as checks: short functions and modules, package docstrings that name what they hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CODE = sorted([*Path("pipeline").rglob("*.py"), *Path("stages").glob("*.py")])


@pytest.mark.parametrize("path", CODE, ids=str)
def test_functions_fit_a_screen_and_modules_a_sitting(path: Path):
    source = path.read_text()
    assert len(source.splitlines()) <= 300, f"{path}: {len(source.splitlines())} lines (at most 300): split it"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= 60, f"{path}:{node.lineno} {node.name} is {length} lines (at most 60)"


@pytest.mark.parametrize("package", sorted(p.parent for p in Path("pipeline").glob("*/__init__.py")), ids=str)
def test_each_package_docstring_names_its_modules(package: Path):
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    for module in sorted(package.glob("*.py")):
        if module.stem != "__init__":
            assert f"`{module.stem}`" in doc or f"{module.stem}.py" in doc, f"{package}'s docstring omits {module.stem}"
