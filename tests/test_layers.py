"""The layers of docs/architecture.md, checked: no module imports from a higher layer.

Every `import irface.x` / `from irface.x import ...` in src/irface is read with ast, at module level and
inside functions alike (a lazy import is still a dependency). Packages in one row are independent: they
may import the rows above, never each other.
"""

import ast
import functools
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "irface"

# Lowest first; the table in docs/architecture.md, row for row. `irface` is the package's __init__ (__version__).
LAYERS = [
    {"irface", "errors"},
    {"utils"},
    {"config", "dist"},
    {"device"},
    {"data"},
    {"models", "heads"},
    {"interop"},
    {"eval", "detect"},
    {"engine", "infer"},
    {"export", "gallery"},
    {"cluster"},
    {"serve"},
    {"bench"},
    {"demo_settings"},
    {"demo"},
    {"cli"},
    {"__main__"},
]
# (importing file, imported unit): the known exception, with its reason.
EXCEPTIONS = {
    # A MindSpore .ckpt is converted in memory when a model is loaded; interop builds on models.
    ("models/loading.py", "interop"),
}
LAYER_OF = {unit: i for i, row in enumerate(LAYERS) for unit in row}


def _unit(path: Path) -> str:
    """The package or top-level module a file belongs to: data/images.py -> data, utils.py -> utils."""
    rel = path.relative_to(SRC)
    return "irface" if rel.parts == ("__init__.py",) else rel.parts[0].removesuffix(".py")


def _imported_units(tree: ast.AST) -> set[str]:
    units = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from irface import dist` imports the unit `dist`; `from irface.data import x` the unit `data`.
            names = [f"irface.{a.name}" for a in node.names] if node.module == "irface" else [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "irface":
                units.add(parts[1] if len(parts) > 1 and (SRC / parts[1]).exists() or
                          len(parts) > 1 and (SRC / f"{parts[1]}.py").exists() else "irface")
    return units


@functools.lru_cache(maxsize=None)
def _imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        unit = _unit(path)
        for target in _imported_units(ast.parse(path.read_text(), str(path))):
            if target != unit:
                found.append((path.relative_to(SRC).as_posix(), unit, target))
    return found


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in SRC.rglob("*.py")}
    assert units - LAYER_OF.keys() == set(), "add these to LAYERS here and to docs/architecture.md"


def test_no_import_from_a_higher_layer():
    wrong = [f"{file} imports irface.{target} ({unit}: row {LAYER_OF[unit]}, {target}: row {LAYER_OF[target]})"
             for file, unit, target in _imports()
             if LAYER_OF[target] >= LAYER_OF[unit] and (file, target) not in EXCEPTIONS]
    assert wrong == []


def test_exceptions_are_still_needed():
    # An exception that the code no longer needs is removed here, so that it cannot hide a new import.
    used = {(file, target) for file, _, target in _imports()}
    assert EXCEPTIONS - used == set()


@pytest.mark.parametrize("source, units", [
    ("from irface import dist\n", {"dist"}),
    ("def f():\n    from irface.infer.photo import PhotoFace\n", {"infer"}),
    ("import irface.models.fold\n", {"models"}),
    ("from irface import __version__\n", {"irface"}),
    ("from . import x\nimport numpy\n", set()),
])
def test_imports_are_read_at_every_level(source, units):
    assert _imported_units(ast.parse(source)) == units


# The optional extras (pyproject's ray, postgres, cluster, detect, serve, export, gallery): imported inside the
# function that needs them, which turns a missing one into a line naming the extra, never at a module's top.
EXTRAS = {"ray", "pyarrow", "psycopg", "sklearn", "scipy", "faiss", "onnx", "onnxruntime", "fastapi", "uvicorn",
          "matplotlib", "safetensors", "simplejpeg", "cv2"}


def _top_level_imports(tree: ast.Module) -> set[str]:
    # Module-level statements, and those nested in a module-level if/try (not in a def or class body).
    found, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", [])
            todo += [n for h in getattr(node, "handlers", []) for n in h.body]
    return found


def test_extras_are_imported_where_used():
    wrong = [f"{path.relative_to(SRC).as_posix()} imports {name} at its top"
             for path in sorted(SRC.rglob("*.py"))
             for name in sorted(_top_level_imports(ast.parse(path.read_text(), str(path))) & EXTRAS)]
    assert wrong == []


def test_top_level_imports_are_read():
    tree = ast.parse("import ray\ntry:\n    from pyarrow import parquet\nexcept ImportError:\n    pass\n"
                     "def f():\n    import psycopg\n")
    assert _top_level_imports(tree) == {"ray", "pyarrow"}


def _missing_extra_cases():
    from irface.errors import GalleryError, UserError
    from irface.eval.plot import require_matplotlib
    from irface.gallery.index import import_faiss
    from irface.gallery.pg import _psycopg
    from irface.infer.shards import check_output_folder
    from irface.serve.app import _fastapi_class

    return [("faiss", import_faiss, GalleryError, "a gallery needs faiss, from the gallery extra: "
                                                  "pip install 'irface[gallery]'"),
            ("psycopg", _psycopg, GalleryError, "a PostgreSQL gallery needs psycopg, from the postgres extra"),
            ("fastapi_offline", _fastapi_class, UserError, "irface serve needs fastapi_offline, from the serve extra"),
            ("matplotlib", require_matplotlib, UserError, "--plot needs matplotlib, from the plot extra"),
            ("pyarrow", lambda: check_output_folder("unused"), UserError, "irface embed --ray needs pyarrow, from the ray")]


@pytest.mark.parametrize("case", range(5))
def test_a_missing_extra_is_one_error_naming_it(case, monkeypatch):
    module, call, error, text = _missing_extra_cases()[case]
    monkeypatch.setitem(sys.modules, module, None)  # import -> ImportError, as if not installed
    with pytest.raises(error) as e:
        call()
    assert str(e.value).startswith(text), e.value
