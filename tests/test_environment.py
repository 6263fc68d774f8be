"""environment.yml and pyproject.toml pin the same packages at the same versions."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [
        s for group in project["optional-dependencies"].values() for s in group
    ]
    return dict(s.split("==") for s in specs)


def _conda_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return dict(s.split("==") for s in pip if "==" in s)


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        assert "==" in spec, f"{spec} is not pinned"


def test_environment_yml_matches_pyproject():
    assert _conda_pins() == _pyproject_pins()


def test_environment_yml_uses_python_311():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]


def test_makefile_installs_the_same_torch_pin_first():
    makefile = (ROOT / "Makefile").read_text()
    torch = _pyproject_pins()["torch"]
    assert f"pip install --quiet torch=={torch}" in makefile
    assert makefile.index(f"torch=={torch}") < makefile.index("-e '.[dev]'")


def test_dev_includes_the_lab_extra_and_make_lab_opens_the_notebooks():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert set(extras["lab"]) <= set(extras["dev"])
    assert {s.split("==")[0] for s in extras["lab"]} == {"jupyterlab", "ipywidgets"}
    makefile = (ROOT / "Makefile").read_text()
    assert "jupyter lab --notebook-dir=notebooks" in makefile.split("\nlab:")[1].split("\n\n")[0]
