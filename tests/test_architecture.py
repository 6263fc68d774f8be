"""The shape of the package (docs/architecture.md): layers, imports, short functions, and
documentation that links only inside the repository."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cxrlib"
MAX_FUNCTION_LINES = 80  # not counting the docstring


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    lines = node.end_lineno - node.lineno + 1
    first = node.body[0]
    value = first.value if isinstance(first, ast.Expr) else None
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def test_no_function_is_longer_than_80_lines():
    """No function or method in cxrlib is over 80 lines, its docstring aside."""
    lengths = {
        f"{path.relative_to(ROOT).as_posix()} {node.name}": _body_lines(node)
        for path in _modules()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    long = [f"{k} ({n} lines)" for k, n in lengths.items() if n > MAX_FUNCTION_LINES]
    assert not long, "functions over 80 lines (docstring aside):\n" + "\n".join(long)


def test_the_length_check_counts_lines_without_the_docstring():
    tree = ast.parse('def f():\n    """doc\n    more"""\n    a = 1\n    return a\n')
    assert _body_lines(tree.body[0]) == 3  # def, assignment, return


def _is_cxrlib_import(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "cxrlib"
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] == "cxrlib" for a in node.names)
    return False


def test_cxrlib_imports_are_at_module_level_except_deferred_ones():
    """Only the command line (a subcommand's code loads when it runs) and the package's
    ``__init__`` (``import cxrlib.base`` must not load the top layer) defer imports of
    cxrlib, and each deferral says why in a comment just above it."""
    found = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for sub in ast.walk(node):
                if not _is_cxrlib_import(sub):
                    continue
                where = f"{path.relative_to(ROOT)}:{sub.lineno}"
                if path.is_relative_to(PACKAGE / "cli"):
                    continue  # the documented rule of the cli package (its docstring)
                above = lines[sub.lineno - 2].strip() if sub.lineno > 1 else ""
                if path == PACKAGE / "__init__.py" and above.startswith("#"):
                    continue
                found.append(where)
    assert not found, "function-level cxrlib imports:\n" + "\n".join(found)


def test_import_layers_hold():
    """``lint-imports`` (pyproject.toml's contracts): layers import downward only, and no
    package has an import cycle."""
    exe = Path(sys.executable).with_name("lint-imports")
    assert exe.is_file(), f"{exe} is missing: install the dev extra (pip install -e '.[dev]')"
    done = subprocess.run(
        [str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize(
    "doc", ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))]
)
def test_documentation_links_stay_inside_the_repository(doc):
    """A user's clone has only the repository: every relative link resolves inside it."""
    path = ROOT / doc
    bad = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        resolved = (path.parent / target).resolve()
        if not resolved.is_relative_to(ROOT) or not resolved.exists():
            bad.append(target)
    assert not bad, f"{doc}: links that leave the repository or do not exist: {bad}"


def test_method_and_architecture_docs_exist_and_are_linked():
    readme = (ROOT / "README.md").read_text()
    for doc in ("docs/method.md", "docs/architecture.md"):
        assert (ROOT / doc).is_file()
        assert doc in readme
    assert "../shared/METHOD.md" not in readme


TRAINING_LOOP = "cxrlib.training.train"


def _loop_imports(tree: ast.AST) -> list[str]:
    """What a module takes from the training loop beyond its ``train`` function: each
    ``from cxrlib.training.train import X`` with X not ``train``, and every import of the
    module itself (``import cxrlib.training.train``, ``from cxrlib.training import train``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == TRAINING_LOOP:
            found += [a.name for a in node.names if a.name != "train"]
        elif isinstance(node, ast.ImportFrom) and node.module == "cxrlib.training":
            found += [f"module {TRAINING_LOOP}" for a in node.names if a.name == "train"]
        elif isinstance(node, ast.Import):
            found += [f"module {a.name}" for a in node.names if a.name == TRAINING_LOOP]
    return found


def _notebook_code(path: Path) -> str:
    """The code cells of a notebook, IPython magics and shell lines left out."""
    import nbformat

    cells = nbformat.read(path, as_version=4).cells
    lines = [line for c in cells if c.cell_type == "code" for line in c.source.splitlines()]
    return "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def test_only_the_training_package_and_the_cli_reach_into_the_training_loop():
    """Model inputs live in ``training.inputs``, checkpoints in ``training.checkpoint``:
    outside ``cxrlib/training/`` and the command line, modules and notebooks import
    nothing from ``training.train`` but its ``train`` function."""
    sources = {
        path.relative_to(ROOT).as_posix(): path.read_text()
        for path in _modules()
        if not path.is_relative_to(PACKAGE / "training")
        and not path.is_relative_to(PACKAGE / "cli")
    }
    sources |= {
        path.relative_to(ROOT).as_posix(): _notebook_code(path)
        for path in sorted((ROOT / "notebooks").glob("*.ipynb"))
    }
    found = {name: _loop_imports(ast.parse(text)) for name, text in sources.items()}
    found = {name: names for name, names in found.items() if names}
    assert not found, f"imports from {TRAINING_LOOP} other than train: {found}"


def test_the_training_loop_check_finds_each_kind_of_import():
    tree = ast.parse(
        "from cxrlib.training.train import train, split_dataset\n"
        "import cxrlib.training.train as t\n"
        "from cxrlib.training import train as loop\n"
        "from cxrlib.training.train import train\n"
    )
    assert _loop_imports(tree) == [
        "split_dataset",
        f"module {TRAINING_LOOP}",
        f"module {TRAINING_LOOP}",
    ]


def test_the_training_module_is_the_loop_alone():
    # inputs, checkpoints, optimisation, validation and the metrics log live beside it
    # (docs/architecture.md); the loop itself stays readable in one sitting
    lines = (PACKAGE / "training" / "train.py").read_text().splitlines()
    assert len(lines) < 500


def test_no_code_reads_what_a_notebook_printed():
    # provenance is recorded as data (run.json, segmenter.json, run_config.json), never
    # scraped from an executed notebook's outputs (docs/architecture.md)
    readers = [
        path
        for path in PACKAGE.rglob("*.py")
        if re.search(
            r"\bimport (nbformat|papermill)\b|from (nbformat|papermill)\b", path.read_text()
        )
    ]
    assert readers  # the workbook runs the notebooks
    for path in readers:
        assert not re.search(r"""["']outputs["']|\.outputs\b""", path.read_text()), path
