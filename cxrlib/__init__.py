"""cxrlib: chest X-ray Findings generation with anatomy-guided attention.

The package is the product; the notebooks in ``notebooks/`` and the ``cxr`` command
are two thin faces of it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cxrlib")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
