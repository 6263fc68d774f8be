"""cxrlib: chest X-ray Findings generation with anatomy-guided attention.

The package is the product; the notebooks in ``notebooks/`` and the ``cxr`` command
are two thin faces of it.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("cxrlib")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "report_image"]


def report_image(image, run, **kwargs):
    """Findings, labels and (with ``out=``) an attention PNG for one radiograph with a
    trained run: :class:`cxrlib.experiment.inference.ImageReport`. Keywords as
    :class:`cxrlib.experiment.inference.Reporter` (``masks``, ``segmenter``, ``device``) and ``out``
    (a folder for the PNG). For many images use :func:`cxrlib.experiment.inference.report_images`,
    which loads the run once."""
    # deferred: `import cxrlib.<anything>` runs this file, and must not load the whole
    # package (torch, transformers) through the top layer
    from cxrlib.experiment.inference import Reporter

    out = kwargs.pop("out", None)
    return Reporter(run, **kwargs).report(image, Path(out) if out is not None else None)
