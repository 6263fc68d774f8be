"""Each word of the vocabulary (:mod:`cxrlib.base.vocabulary`) is defined once.

The package source and the notebooks are read as Python: a tuple, list or set literal
holding exactly the words of one vocabulary, or a phantom side column written out as a
string, anywhere but ``vocabulary.py`` is a second definition and fails here.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrlib.base import vocabulary

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "cxrlib" / "base" / "vocabulary.py"
WORDS = {
    name: frozenset(getattr(vocabulary, name))
    for name in (
        "MODES",
        "PROFILES",
        "MASK_SOURCES",
        "PRIOR_STRUCTURES",
        "PRIOR_SCHEDULES",
        "PRIOR_PADDINGS",
        "PHANTOM_LAYOUTS",
        "LATERAL_OBSERVATIONS",
    )
}


def _code(path: Path) -> str:
    """A module's source, or a notebook's code cells (shell and magic lines left out)."""
    if path.suffix == ".py":
        return path.read_text()
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))


def _sources() -> list[Path]:
    files = sorted((ROOT / "cxrlib").rglob("*.py")) + sorted((ROOT / "notebooks").glob("*.ipynb"))
    return [p for p in files if p != HOME]


def _strings(node: ast.AST) -> frozenset[str] | None:
    """The words of a tuple, list or set literal of strings only, else None."""
    if not isinstance(node, ast.Tuple | ast.List | ast.Set) or not node.elts:
        return None
    if not all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return None
    return frozenset(e.value for e in node.elts)


def _second_definitions(path: Path, root: Path = ROOT) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(_code(path))):
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
        words = _strings(node)
        found += [f"{where}: {name}" for name, w in WORDS.items() if words == w]
        if isinstance(node, ast.Constant) and node.value in vocabulary.PHANTOM_SIDE_COLUMNS:
            found.append(f"{where}: side column {node.value!r}")
    return found


def test_no_vocabulary_is_defined_twice():
    found = [hit for path in _sources() for hit in _second_definitions(path)]
    assert found == [], "import these from cxrlib.base.vocabulary instead:\n" + "\n".join(found)


def test_the_scan_finds_a_second_definition(tmp_path):
    module = tmp_path / "x.py"
    module.write_text('M = ("strict", "none", "soft")\nC = {"Edema": "effusion_side"}\n')
    assert _second_definitions(module, tmp_path) == [
        "x.py:1: MODES",
        "x.py:2: side column 'effusion_side'",
    ]


def test_the_vocabulary_is_a_leaf():
    tree = ast.parse(HOME.read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    assert all(getattr(n, "module", None) == "__future__" for n in imports)


def test_tables_keyed_by_the_vocabulary_cover_it():
    from cxrlib.experiment.workbook import PROFILES as WORKBOOK_PROFILES
    from cxrlib.training.config import PROFILES as CONFIG_PROFILES
    from cxrlib.training.model_card import MODE_TEXT

    assert tuple(CONFIG_PROFILES) == vocabulary.PROFILES
    assert tuple(WORKBOOK_PROFILES) == vocabulary.PROFILES
    assert tuple(MODE_TEXT) == vocabulary.MODES
    assert set(vocabulary.SIDE_COLUMNS) == set(vocabulary.LATERAL_OBSERVATIONS)


@pytest.mark.parametrize(
    "modules",
    ["cxrlib.training.config, cxrlib.model.config", "cxrlib.cli"],
)
def test_the_configs_and_the_cli_import_without_torch(modules):
    code = f"import {modules}; import sys; assert 'torch' not in sys.modules, 'torch loaded'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
