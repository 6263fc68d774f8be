"""Fuzz the config loader and ``--set``: YAML / JSON files with random nesting and types,
and ``KEY=VALUE`` with random keys and values.

The loader's documented errors are :class:`~cxrlib.base.errors.CxrError` and
:class:`FileNotFoundError` (``cxr`` prints both as one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from cxrlib.base.errors import CxrError
from cxrlib.training.config import RunConfig, load_config, parse_assignment, profile_config

pytestmark = pytest.mark.slow  # the fuzz ci profile runs in make test-all

TREE = profile_config("smoke").to_dict()
KEYS = sorted(
    {f"{node}.{key}" for node, sub in TREE.items() if isinstance(sub, dict) for key in sub}
)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(), st.text(max_size=8),
    st.sampled_from(["auto", "linear", "bf16", "min", "resnet", "lungs", "1e-4", "[1, 2]"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def partial_trees(draw) -> dict:
    """A partial config: known keys (and a few unknown) with values of random types."""
    tree: dict = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        node, leaf = key.split(".")
        tree.setdefault(node, {})[leaf] = draw(VALUES)
    if draw(st.integers(0, 4)) == 0:
        tree[draw(st.sampled_from([*TREE, "x", "1"]))] = draw(VALUES)
    return tree


def _one_line_config_error(err: BaseException) -> None:
    """A CxrError (or a subclass) of one line."""
    assert isinstance(err, CxrError), f"{type(err).__name__}: {err}"
    assert not isinstance(err, UnicodeError), f"{type(err).__name__}: {err}"
    assert str(err).strip() and "\n" not in str(err), repr(str(err))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


def _dump(tree: object, suffix: str) -> str:
    return json.dumps(tree) if suffix == ".json" else yaml.safe_dump(tree)


@given(
    content=st.one_of(
        st.binary(max_size=100),
        st.text(max_size=100).map(str.encode),
        partial_trees().map(lambda t: _dump(t, ".yaml").encode()),
        VALUES.map(lambda v: _dump(v, ".yaml").encode()),
    ),
    suffix=st.sampled_from([".yaml", ".json", ".yml", ""]),
)
@example(content=b"\x80", suffix=".yaml")  # was a UnicodeDecodeError naming no file
@example(content=b"data: {phantom_n: abc}", suffix=".yaml")  # was a TypeError
@example(content=b"{1: 2, a: 3}", suffix=".yaml")  # was a TypeError (sorting the keys)
@example(content=b"[" * 600 + b"]" * 600, suffix=".yaml")  # was a RecursionError
@example(content=b"[" * 3000 + b"]" * 3000, suffix=".json")  # was a RecursionError
@example(content=b"pretrain:\n epochs: 0", suffix=".yaml")  # names its node: pretrain
@example(content=b"priors:\n sigma: 0", suffix=".yaml")  # was a message naming no node
@example(content=b"model:\n ? ''", suffix=".yaml")  # was "ModelConfig: unknown field(s) "
def test_load_config_any_file(folder, content, suffix):
    path = folder / f"config{suffix}"
    path.write_bytes(content)
    try:
        config = load_config("smoke", path)
    except CxrError as err:
        _one_line_config_error(err)
        names = (str(path), "config", ".", *TREE)  # the file, or the key / node at fault
        assert any(name in str(err) for name in names), str(err)
        return
    assert isinstance(config, RunConfig)


@given(tree=partial_trees())
def test_load_config_json_tree(folder, tree):
    path = folder / "tree.json"
    path.write_text(json.dumps(tree))
    try:
        assert isinstance(load_config("smoke", path), RunConfig)
    except CxrError as err:
        _one_line_config_error(err)


KEY_TEXT = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
VALUE_TEXT = st.one_of(st.text(max_size=12), VALUES.map(lambda v: json.dumps(v)))


@given(key=KEY_TEXT, value=VALUE_TEXT, sep=st.sampled_from(["=", "", "==", " = "]))
@example(key="train.lr", value="[", sep="=")  # was a yaml ParserError
@example(key="train.betas", value="[1, [2]]", sep="=")  # was accepted
def test_set_any_assignment(key, value, sep):
    text = f"{key}{sep}{value}"
    try:
        override = parse_assignment(text)
        config = load_config("smoke", None, [override])
    except CxrError as err:
        _one_line_config_error(err)
        return
    assert isinstance(config, RunConfig)
