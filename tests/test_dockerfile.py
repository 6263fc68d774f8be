"""The container image's Dockerfile (docs/cloud.md): the same torch as the Makefile, `cxr`
as its entry point, no token in it, both variants handled, and hadolint clean."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
# hadolint comes with the dev extra (pyproject.toml): next to this interpreter, or on PATH
HADOLINT = next(
    (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()),
    shutil.which("hadolint"),
)


def _instructions(name: str) -> list[str]:
    """The arguments of every ``name`` instruction (continuation lines joined)."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1) for m in re.finditer(rf"^{name}\s+(.*)$", text, re.M)]


def test_torch_pin_equals_the_makefiles():
    makefile = re.search(r"pip install --quiet torch==([\w.]+)", (ROOT / "Makefile").read_text())
    assert _instructions("ARG").count(f"TORCH_VERSION={makefile.group(1)}") == 1
    assert '"torch==${TORCH_VERSION}"' in DOCKERFILE


def test_entrypoint_is_cxr_and_user_is_not_root():
    assert _instructions("ENTRYPOINT") == ['["cxr"]']
    users = _instructions("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")


def test_no_token_is_set_at_build_time():
    for line in _instructions("ENV") + _instructions("ARG"):
        assert not re.search(r"TOKEN|SECRET|PASSWORD|KEY\b|hf_[A-Za-z0-9]{8,}", line), line


def test_both_variants_are_handled_and_others_fail():
    assert "VARIANT=cpu" in _instructions("ARG")
    case = DOCKERFILE[DOCKERFILE.index('case "${VARIANT}"') :]
    cpu = re.search(r"^\s*cpu\)(.*?);;", case, re.M).group(1)
    cuda = re.search(r"^\s*cuda\)(.*?);;", case, re.M).group(1)
    assert "download.pytorch.org/whl/cpu" in cpu
    assert "pip install" in cuda and "whl/cpu" not in cuda
    assert re.search(r"^\s*\*\).*exit 1", case, re.M)


def test_installs_the_package_not_editable_with_runtime_extras():
    installs = [r for r in _instructions("RUN") if re.search(r"pip install \"\.[\[\"]", r)]
    assert len(installs) == 1 and "-e" not in installs[0].split()
    extras = re.search(r"\.\[([\w,]+)\]", installs[0]).group(1).split(",")
    assert set(extras) == {"dicom", "cloud"}


@pytest.mark.needs_tool(HADOLINT is not None, reason="hadolint is missing (pip install '.[dev]')")
def test_hadolint_finds_nothing():
    result = subprocess.run(
        [HADOLINT, "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
