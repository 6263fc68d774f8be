"""No unsafe loads in cxrlib: nothing that unpickles or runs outside data.

The package source is parsed (AST, not text search, so ``model.eval()`` is not
``eval(``, and ``from torch import load as l; l(...)`` is still ``torch.load``) for:

- ``torch.load`` / ``torch.jit.load`` / ``torch.serialization.load`` (pickle inside);
- loads of ``pickle``, ``cPickle``, ``_pickle``, ``cloudpickle``, ``dill``, ``joblib``,
  ``marshal``, ``shelve`` (importing any of these modules at all is refused too);
- ``eval`` / ``exec`` (builtins);
- ``yaml.load`` / ``yaml.load_all`` without a safe loader, ``yaml.unsafe_load``,
  ``yaml.full_load`` (``yaml.safe_load`` is fine);
- ``numpy.load`` with ``allow_pickle`` other than ``False``;
- ``pandas.read_pickle`` (any ``.read_pickle(...)`` call).

Checkpoints and caches are safetensors and JSON. The one exception is listed in
:data:`ALLOWED` with its reason; the test fails on an entry no longer needed too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cxrlib"

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "marshal"}
PICKLE_MODULES |= {"shelve"}
TORCH_LOADS = {"torch.load", "torch.jit.load", "torch.serialization.load"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}

# (file relative to the repository, call) -> why it is allowed. An allowed torch.load
# must still pass weights_only=True (torch's restricted unpickler: tensors and plain
# containers only, no arbitrary objects or code).
ALLOWED: dict[tuple[str, str], str] = {
    ("cxrlib/metrics/clinical.py", "torch.load"): (
        "the CheXbert labeler's third-party checkpoint (chexbert.pth) is published only as "
        "a torch pickle; it is read with weights_only=True"
    ),
}


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    call: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.call} ({self.why})"


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> dotted name it was imported as (``np`` -> ``numpy``)."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    names[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _dotted(func: ast.expr, aliases: dict[str, str]) -> str | None:
    """The dotted name a call goes to (imports resolved), or None when not a name."""
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    parts.append(aliases.get(func.id, func.id))
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_constant(node: ast.expr | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _yaml_loader_is_safe(call: ast.Call) -> bool:
    loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
    if isinstance(loader, ast.Attribute):
        return loader.attr in SAFE_YAML_LOADERS
    return isinstance(loader, ast.Name) and loader.id in SAFE_YAML_LOADERS


def _why_unsafe(name: str, call: ast.Call) -> str | None:
    """Why call ``name`` may run outside data (None when it cannot)."""
    top, last = name.split(".")[0], name.rsplit(".", 1)[-1]
    if name in TORCH_LOADS:
        return "unpickles the file"
    if top in PICKLE_MODULES and (last.startswith("load") or last in {"Unpickler", "open"}):
        return "unpickles its input"
    if name in {"eval", "exec", "builtins.eval", "builtins.exec"}:
        return "runs text as code"
    if name in {"yaml.unsafe_load", "yaml.full_load", "yaml.full_load_all"}:
        return "builds arbitrary Python objects"
    if name in {"yaml.load", "yaml.load_all"} and not _yaml_loader_is_safe(call):
        return "without a SafeLoader (use yaml.safe_load)"
    allow_pickle = _keyword(call, "allow_pickle")
    if name == "numpy.load" and allow_pickle is not None and not _is_constant(allow_pickle, False):
        return "allow_pickle unpickles object arrays"
    if last == "read_pickle":
        return "unpickles the file"
    return None


def unsafe_calls(source: str, file: str) -> list[Finding]:
    """Every unsafe load in ``source`` (file ``file``, relative to the repository) that
    :data:`ALLOWED` does not allow."""
    tree = ast.parse(source, filename=file)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                modules = [node.module]
            for module in modules:
                if module.split(".")[0] in PICKLE_MODULES:
                    found.append(Finding(file, node.lineno, f"import {module}", "pickle module"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        why = _why_unsafe(name, node) if name else None
        if why is None:
            continue
        if (file, name) in ALLOWED and (
            name not in TORCH_LOADS or _is_constant(_keyword(node, "weights_only"), True)
        ):
            continue
        found.append(Finding(file, node.lineno, name, why))
    return found


def _package_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_no_unsafe_loads():
    found = []
    for path in _package_files():
        found += unsafe_calls(path.read_text(), path.relative_to(ROOT).as_posix())
    assert not found, "unsafe loads in cxrlib (use safetensors / json / yaml.safe_load):\n" + (
        "\n".join(map(str, found))
    )


def test_every_allowed_load_is_still_there():
    """An allowlist entry whose call went away must be removed, not left open."""
    for file, call in ALLOWED:
        source = (ROOT / file).read_text()
        tree = ast.parse(source)
        aliases = _aliases(tree)
        calls = [
            n
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and _dotted(n.func, aliases) == call
        ]
        assert calls, f"{file}: no {call} left; remove it from ALLOWED"


UNSAFE = {
    "torch.load": "import torch\nstate = torch.load(path)\n",
    "torch.load weights_only": "import torch\nstate = torch.load(path, weights_only=True)\n",
    "torch.load imported": "from torch import load as read\nstate = read(path)\n",
    "torch alias": "import torch as t\nt.load(path)\n",
    "torch.jit.load": "import torch\ntorch.jit.load(path)\n",
    "pickle.loads": "import pickle\nobj = pickle.loads(data)\n",
    "cPickle": "import cPickle\ncPickle.load(fh)\n",
    "dill": "import dill\ndill.load(fh)\n",
    "joblib": "from joblib import load\nload(path)\n",
    "eval": "value = eval(text)\n",
    "exec": "exec(code, {})\n",
    "yaml.load": "import yaml\nyaml.load(text)\n",
    "yaml.load Loader": "import yaml\nyaml.load(text, Loader=yaml.Loader)\n",
    "yaml.unsafe_load": "import yaml\nyaml.unsafe_load(text)\n",
    "np.load allow_pickle": "import numpy as np\nnp.load(path, allow_pickle=True)\n",
    "pd.read_pickle": "import pandas as pd\npd.read_pickle(path)\n",
}
SAFE = {
    "eval method": "model.eval()\nmodel.train().eval()\n",
    "yaml.safe_load": "import yaml\nyaml.safe_load(text)\n",
    "yaml SafeLoader": "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)\n",
    "np.load": "import numpy as np\nnp.load(path)\nnp.load(path, allow_pickle=False)\n",
    "safetensors": "from safetensors.torch import load_file\nload_file(path)\n",
    "json": "import json\njson.loads(text)\n",
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_the_scan_finds_a_synthetic_unsafe_load(case):
    found = unsafe_calls(UNSAFE[case], "cxrlib/synthetic.py")
    assert found, f"not found: {UNSAFE[case]!r}"
    assert all(f.file == "cxrlib/synthetic.py" and f.line >= 1 for f in found)


def test_the_package_scan_fails_on_a_torch_load(tmp_path, monkeypatch):
    """The package test itself fails once a module holds ``torch.load(``."""
    package = tmp_path / "cxrlib"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "model" / "weights.py").write_text(
        "import torch\n\n\ndef read(path):\n    return torch.load(path)\n"
    )
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    monkeypatch.setattr(f"{__name__}.PACKAGE", package)
    with pytest.raises(AssertionError, match=r"cxrlib/model/weights.py:5: torch.load"):
        test_the_package_has_no_unsafe_loads()


@pytest.mark.parametrize("case", sorted(SAFE))
def test_the_scan_passes_safe_code(case):
    assert unsafe_calls(SAFE[case], "cxrlib/synthetic.py") == []


def test_the_allowlist_needs_its_file_and_weights_only():
    allowed = "import torch\ntorch.load(p, map_location='cpu', weights_only=True)\n"
    assert unsafe_calls(allowed, "cxrlib/metrics/clinical.py") == []
    assert unsafe_calls(allowed, "cxrlib/metrics/other.py")  # another file: refused
    for risky in ("torch.load(p)\n", "torch.load(p, weights_only=False)\n"):
        assert unsafe_calls("import torch\n" + risky, "cxrlib/metrics/clinical.py")
