"""Every committed notebook is clean, thin and parameterised the papermill way."""

import ast
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_notebooks_are_numbered():
    assert NOTEBOOKS, "no notebooks"
    for path in NOTEBOOKS:
        assert path.name[:2].isdigit() and path.name[2] == "_", path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a code cell has outputs"
            assert cell.execution_count is None, f"{path.name}: a code cell has a count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_first_and_python3_kernel(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and tagged[0] is code[0]
    assert not plain_literal_problems(tagged[0].source), path.name


def plain_literal_problems(source: str) -> list[str]:
    """What keeps a parameters cell from being "every knob a plain literal": each statement
    must be ``name = literal`` (a number, string, bool, None, or a list/tuple/dict of
    them), one name per line, each name once; returns the offending lines."""
    problems, seen = [], set()
    for node in ast.parse(source).body:
        line = ast.get_source_segment(source, node) or ""
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if not isinstance(target, ast.Name) or len(node.targets) != 1:
            problems.append(line)
            continue
        try:
            ast.literal_eval(node.value)
        except ValueError:
            problems.append(line)
            continue
        if target.id in seen or node.lineno != node.end_lineno:
            problems.append(line)
        seen.add(target.id)
    return problems


@pytest.mark.parametrize(
    "source",
    [
        'manifest = profile_manifest("smoke")',
        "seeds = list(range(3))",
        "a = b = 1",
        "x, y = 1, 2",
        "import os",
        "n = 1\nn = 2",
        "epochs = 1 if True else 2",
        "size += 1",
    ],
)
def test_the_literal_check_catches_what_is_not_a_plain_literal(source):
    assert plain_literal_problems(source)
    assert not plain_literal_problems("seeds = [0, 1, 2]  # ok\nmanifest = None\nx = -1.5")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_thin_no_function_definitions(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert "def " not in cell.source and "lambda" not in cell.source
            assert "class " not in cell.source


def _code_lines(path: Path) -> list[tuple[int, int, str]]:
    """``(cell number, line number, normalised line)`` of every code line of ``path`` the
    copy rule looks at (see :func:`test_no_code_block_appears_twice`)."""
    nb = nbformat.read(path, as_version=4)
    out = []
    for cell_no, cell in enumerate(nb.cells, start=1):
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        for line_no, line in enumerate(cell.source.splitlines(), start=1):
            text = " ".join(line.split())
            if _trivial(text):
                continue
            out.append((cell_no, line_no, text))
    return out


def _trivial(text: str) -> bool:
    """Lines the copy rule skips: blanks, comments, imports, IPython magics, lines of
    brackets only, a bare name (a cell's displayed result, e.g. ``fig``) and the one-call
    figure idioms every notebook shares (``figures.save_figure(...)``,
    ``figures.set_theme()``)."""
    return (
        not text
        or text.startswith(("#", "%", "import ", "from "))
        or not any(ch.isalnum() for ch in text)
        or text.isidentifier()
        or text.startswith(("figures.save_figure(", "figures.set_theme("))
    )


COPY_BLOCK = 3
"""Consecutive looked-at lines that make a copy."""


def test_no_code_block_appears_twice():
    """No notebook repeats logic: every block of COPY_BLOCK consecutive code lines (after
    dropping the trivial lines of :func:`_trivial` and normalising whitespace; the
    parameters cells are not looked at) appears once across all notebooks. Logic two
    notebooks need belongs in the library, called by both."""
    seen: dict[tuple[str, ...], tuple[str, int, int]] = {}
    copies = []
    for path in NOTEBOOKS:
        lines = _code_lines(path)
        for i in range(len(lines) - COPY_BLOCK + 1):
            window = lines[i : i + COPY_BLOCK]
            if len({cell for cell, _, _ in window}) != 1:
                continue  # blocks stay inside one cell
            key = tuple(text for _, _, text in window)
            where = (path.name, window[0][0], window[0][1])
            if key in seen and seen[key] != where:
                first = seen[key]
                copies.append(
                    f"{first[0]} cell {first[1]} line {first[2]} and {where[0]} cell "
                    f"{where[1]} line {where[2]}:\n    " + "\n    ".join(key)
                )
            seen.setdefault(key, where)
    assert not copies, "code repeated (move it into the library):\n" + "\n".join(copies)
