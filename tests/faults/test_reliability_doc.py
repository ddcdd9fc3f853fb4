"""docs/reliability.md names a test for every promise: each named test must exist and carry the faults marker."""

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
# `faults/test_x.py::name[...]` or `test_x.py::name`, inside backquotes, as the page writes them.
CITED = re.compile(r"`((?:faults/)?test_\w+\.py)::(\w+)(?:\[[^\]]*\])?`")


def _is_faults_mark(node: ast.expr) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "faults" and "mark" in ast.unparse(node)


def _marked_tests(path: Path) -> dict[str, bool]:
    """Test functions of a file -> whether they carry the faults marker (their own, or the module's)."""
    tree = ast.parse(path.read_text())
    module_marked = any(
        isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
        and "faults" in ast.unparse(n.value) for n in tree.body)
    return {n.name: module_marked or any(_is_faults_mark(d) for d in n.decorator_list)
            for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_cited_test_exists_and_is_in_the_fault_suite():
    cited = CITED.findall(DOC.read_text())
    assert len(cited) > 60
    for file, name in cited:
        tests = _marked_tests(ROOT / "tests" / file)
        assert name in tests, f"docs/reliability.md cites {file}::{name}, which does not exist"
        assert tests[name], f"{file}::{name} is cited in docs/reliability.md but lacks @pytest.mark.faults"


def test_every_test_of_the_fault_folder_is_cited():
    cited = {(f, n) for f, n in CITED.findall(DOC.read_text())}
    for path in sorted((ROOT / "tests" / "faults").glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        for name in _marked_tests(path):
            assert (f"faults/{path.name}", name) in cited, f"faults/{path.name}::{name} is not on docs/reliability.md"
