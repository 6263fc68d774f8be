"""data_manifests/README.md documents exactly the columns the code uses."""

import re
from pathlib import Path

from cxrlib.data.manifest import OPTIONAL_COLUMNS, REQUIRED_COLUMNS
from cxrlib.data.phantom.findings import attribute_columns

DOC = Path(__file__).resolve().parents[2] / "data_manifests" / "README.md"


def _table(heading: str) -> list[str]:
    text = DOC.read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)


def test_required_columns_documented_in_order():
    assert _table("Required columns") == list(REQUIRED_COLUMNS)


def test_optional_columns_documented():
    assert _table("Optional columns") == list(OPTIONAL_COLUMNS)


def test_phantom_attribute_columns_documented():
    section = DOC.read_text().split("## The phantom's extra columns", 1)[1]
    documented = re.findall(r"`([a-z_]+)`", section)
    for col in attribute_columns():
        assert col in documented, col
