"""What made an output: git commit, package versions, platform.

Every run writes :func:`provenance` beside its outputs, so a figure or a number can be
traced to the code and the environment that produced it. No timestamps here: outputs
that must be byte-identical across reruns (the phantom dataset) embed this as is.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = (
    "cxrlib",
    "numpy",
    "pandas",
    "pillow",
    "scipy",
    "torch",
    "matplotlib",
    "seaborn",
    "papermill",
)


def git_commit(path: str | Path | None = None) -> str:
    """Commit of the repository holding ``path`` (default: this package), with
    ``+dirty`` when tracked files are modified; ``"unknown"`` outside a git checkout."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"not installed"`` when absent)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def provenance() -> dict:
    """Git commit, Python, platform and package versions, as a JSON-ready dict."""
    return {
        "git_commit": git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
    }
