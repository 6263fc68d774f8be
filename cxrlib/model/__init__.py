"""The report model: DINOv3 encoder + MLP bridge + GPT-2 with anatomical attention.

- :mod:`cxrlib.model.config`: :class:`ModelConfig` (tiny / published presets, the
  position scheme);
- :mod:`cxrlib.model.attention`: the anatomical attention, registered with transformers
  (the one place the mechanism lives);
- :mod:`cxrlib.model.report_model`: :class:`ReportModel` (forward, save, load);
- :mod:`cxrlib.model.generation`: greedy and beam search, with or without the KV cache
  (``ReportModel.generate`` calls it);
- :mod:`cxrlib.model.tokenizer`: :class:`ReportTokenizer` (byte-level BPE, BOS/EOS/PAD);
- :mod:`cxrlib.model.hub`: every load of a hub id (``HF_TOKEN``; failures in one line).

Priors cross into the model as a tensor (B, L, P) in [0, 1]: L decoder layers, P image
patches row-major over the patch grid; ``priors=None`` means uniform (no bias).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cxrlib.model.attention import AnatomicalPrior
    from cxrlib.model.config import ModelConfig
    from cxrlib.model.report_model import ReportModel, ReportModelOutput
    from cxrlib.model.tokenizer import ReportTokenizer

# where each name lives; imported when first used, so that ``cxrlib.model.config``
# (read by configs and the CLI) does not load torch through this package
_HOMES = {
    "AnatomicalPrior": "cxrlib.model.attention",
    "ModelConfig": "cxrlib.model.config",
    "ReportModel": "cxrlib.model.report_model",
    "ReportModelOutput": "cxrlib.model.report_model",
    "ReportTokenizer": "cxrlib.model.tokenizer",
}

__all__ = [
    "AnatomicalPrior",
    "ModelConfig",
    "ReportModel",
    "ReportModelOutput",
    "ReportTokenizer",
]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
