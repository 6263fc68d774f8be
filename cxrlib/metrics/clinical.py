"""Clinical efficacy: CheXpert-observation precision, recall and F1 of generated reports.

The generated and the reference report of every item are labelled with the 14 CheXpert
observations (:data:`~cxrlib.data.manifest.CHEXPERT_LABELS`: 1 positive, 0 negative, -1
uncertain, NaN blank) by a labeler (:func:`get_labeler`); the reference labels may
instead come from the dataset (e.g. the phantom's ground truth). Then, per observation,
the labels are made binary and compared.

Conventions (``docs/evaluation.md``; METHOD.md "Metric definitions"):

- **Binarisation**, two conventions, both always reported and named:
  ``uncertain_as_negative`` (MAIRA-2, LLaVA-Rad): positive iff 1;
  ``uncertain_as_positive`` (f1chexbert, vilmedic, RadEval): positive iff 1 or -1.
  Blank (NaN) and 0 are negative in both.
- **Per observation**: TP, FP, FN over items; precision = TP / (TP + FP), recall =
  TP / (TP + FN), F1 = 2 TP / (2 TP + FP + FN); each is 0 when its denominator is 0
  (scikit-learn's ``zero_division=0``, as f1chexbert's ``classification_report``;
  :func:`cxrlib.metrics.rates.precision_recall_f1`).
  Support = reference positives (TP + FN).
- **Micro** F1 over a set of observations: TP, FP, FN pooled over them, then the F1
  formula (0 when nothing is positive anywhere). **Macro** F1: unweighted mean of the
  per-observation F1 over every observation of the set, including those without any
  positive in either report (they count as 0, as scikit-learn's macro average with
  ``zero_division=0`` does; METHOD.md: "unweighted mean of per-label F1").
- **Sets**: ``14`` = all CheXpert observations (13 findings + No Finding); ``5`` =
  Atelectasis, Cardiomegaly, Consolidation, Edema, Pleural Effusion (:data:`FIVE`).
- **Keys**: ``clinical.<convention>.<micro_14|macro_14|micro_5|macro_5>``
  (:data:`CLINICAL_KEYS`), values in [0, 1].
- Every table names the labeler (``cxrlib-rule-v3`` or ``chexbert``) and the convention.

Labelers: ``rule`` (:mod:`cxrlib.metrics.labeler`, no download) and ``chexbert``
(Smit et al. 2020: BERT-base with 14 linear heads, run by :class:`ChexbertLabeler` from a
local ``chexbert.pth``; nothing is downloaded, see :func:`find_chexbert_checkpoint`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.base.errors import CxrError
from cxrlib.data.manifest import CHEXPERT_LABELS
from cxrlib.metrics.labeler import LABELER_NAME, label_reports
from cxrlib.metrics.rates import precision_recall_f1

__all__ = [
    "CHEXBERT_ENV",
    "CHEXBERT_LABELER_NAME",
    "CHEXBERT_ORDER",
    "CLINICAL_KEYS",
    "CONVENTIONS",
    "FIVE",
    "LABELERS",
    "SUBSETS",
    "ChexbertLabeler",
    "ClinicalData",
    "binarize",
    "clinical_f1",
    "find_chexbert_checkpoint",
    "get_labeler",
]

CONVENTIONS: tuple[str, ...] = ("uncertain_as_negative", "uncertain_as_positive")
"""How uncertain (-1) labels count; blank and 0 are always negative."""

FIVE: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)
"""The 5 observations of the "5" averages (CheXpert competition tasks)."""

SUBSETS: dict[str, tuple[str, ...]] = {"14": CHEXPERT_LABELS, "5": FIVE}
"""Observation sets of the averages, by suffix."""

CLINICAL_KEYS: tuple[str, ...] = tuple(
    f"clinical.{c}.{avg}_{s}" for c in CONVENTIONS for s in SUBSETS for avg in ("micro", "macro")
)
"""Flat metric keys, e.g. ``clinical.uncertain_as_negative.micro_14``."""

LABELERS: tuple[str, ...] = ("rule", "chexbert")
"""Labeler choices of :func:`get_labeler` (and ``cxr evaluate --labeler``)."""

CHEXBERT_LABELER_NAME = "chexbert"
CHEXBERT_ENV = "CXR_CHEXBERT"
"""Environment variable naming a local CheXbert checkpoint (``chexbert.pth``)."""

CHEXBERT_ORDER: tuple[str, ...] = CHEXPERT_LABELS[1:] + ("No Finding",)
"""Order of CheXbert's 14 heads: the 13 findings in CheXpert order, then No Finding."""


# --------------------------------------------------------------------------- metrics


def _label_matrix(frame: pd.DataFrame, name: str) -> np.ndarray:
    missing = [c for c in CHEXPERT_LABELS if c not in frame.columns]
    if missing:
        raise CxrError(f"{name} labels lack column(s): {', '.join(missing)}")
    values = frame[list(CHEXPERT_LABELS)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    bad = ~np.isnan(values) & ~np.isin(values, (1.0, 0.0, -1.0))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise CxrError(
            f"{name} labels: row {row}, {CHEXPERT_LABELS[col]!r} = {values[row, col]!r} "
            "is not 1, 0, -1 or blank"
        )
    return values


def binarize(labels: pd.DataFrame | np.ndarray, convention: str) -> np.ndarray:
    """Binary positives of CheXpert labels under a convention.

    Parameters
    ----------
    labels : DataFrame with the 14 CheXpert columns, or array (items, 14)
        Values 1.0 / 0.0 / -1.0 / NaN.
    convention : str
        ``uncertain_as_negative`` (positive iff 1) or ``uncertain_as_positive``
        (positive iff 1 or -1).

    Returns
    -------
    numpy.ndarray of bool, shape (items, 14)
        Columns in :data:`CHEXPERT_LABELS` order.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    values = _label_matrix(labels, "the") if isinstance(labels, pd.DataFrame) else labels
    values = np.asarray(values, dtype=float)
    if convention == "uncertain_as_positive":
        return (values == 1.0) | (values == -1.0)
    return values == 1.0


@dataclass
class ClinicalData:
    """Per-item TP/FP/FN of every observation under both conventions.

    Attributes
    ----------
    counts : dict of str to numpy.ndarray, shape (items, 3, 14), int8
        Per convention: for every item, its TP, FP, FN indicator per observation
        (columns in :data:`CHEXPERT_LABELS` order).
    labeler : str
        Name of the labeler of the generated reports (and of the references, unless
        ``reference_source`` says otherwise).
    reference_source : str
        Where the reference labels came from (the labeler's name, or e.g. ``manifest``).
    """

    counts: dict[str, np.ndarray]
    labeler: str
    reference_source: str

    @classmethod
    def build(
        cls,
        generated: pd.DataFrame,
        reference: pd.DataFrame,
        *,
        labeler: str,
        reference_source: str | None = None,
    ) -> ClinicalData:
        """Compare two label frames row by row (same length, same order)."""
        gen = _label_matrix(generated, "generated")
        ref = _label_matrix(reference, "reference")
        if gen.shape != ref.shape:
            raise CxrError(f"{len(gen)} generated label rows but {len(ref)} reference rows")
        counts = {}
        for convention in CONVENTIONS:
            g, r = binarize(gen, convention), binarize(ref, convention)
            counts[convention] = np.stack([g & r, g & ~r, ~g & r], axis=1).astype(np.int8)
        return cls(counts, labeler, reference_source or labeler)

    def __len__(self) -> int:
        return len(next(iter(self.counts.values())))

    def totals(self, convention: str, idx: np.ndarray | None = None) -> np.ndarray:
        """Summed (TP, FP, FN) per observation, shape (3, 14), of items ``idx``."""
        counts = self.counts[convention]
        if idx is None:
            return counts.sum(axis=0, dtype=np.int64)
        weights = np.bincount(np.asarray(idx, dtype=np.int64), minlength=len(counts))
        return np.tensordot(weights, counts.astype(np.int64), axes=(0, 0))

    def scores(self, idx: np.ndarray | None = None) -> dict[str, float]:
        """Every :data:`CLINICAL_KEYS` value on items ``idx`` (None: all, once)."""
        out = {}
        for convention in CONVENTIONS:
            tp, fp, fn = self.totals(convention, idx)
            f1 = precision_recall_f1(tp, fp, fn)[2]
            for suffix, observations in SUBSETS.items():
                cols = [CHEXPERT_LABELS.index(o) for o in observations]
                micro = precision_recall_f1(tp[cols].sum(), fp[cols].sum(), fn[cols].sum())[2]
                out[f"clinical.{convention}.micro_{suffix}"] = float(micro)
                out[f"clinical.{convention}.macro_{suffix}"] = float(f1[cols].mean())
        return out

    def table(self) -> pd.DataFrame:
        """Per-observation table of both conventions (all items).

        Columns: ``observation, convention, precision, recall, f1, support, tp, fp, fn,
        labeler, reference_labels``; 28 rows (14 observations x 2 conventions).
        """
        rows = []
        for convention in CONVENTIONS:
            tp, fp, fn = self.totals(convention)
            precision, recall, f1 = precision_recall_f1(tp, fp, fn)
            for j, obs in enumerate(CHEXPERT_LABELS):
                rows.append(
                    {
                        "observation": obs,
                        "convention": convention,
                        "precision": float(precision[j]),
                        "recall": float(recall[j]),
                        "f1": float(f1[j]),
                        "support": int(tp[j] + fn[j]),
                        "tp": int(tp[j]),
                        "fp": int(fp[j]),
                        "fn": int(fn[j]),
                        "labeler": self.labeler,
                        "reference_labels": self.reference_source,
                    }
                )
        return pd.DataFrame(rows)


@dataclass
class ClinicalResult:
    """Clinical F1 of a set of reports: flat metrics and the per-observation table."""

    metrics: dict[str, float]
    table: pd.DataFrame
    labeler: str
    reference_source: str
    n: int


def clinical_f1(
    generated: pd.DataFrame,
    reference: pd.DataFrame,
    *,
    labeler: str,
    reference_source: str | None = None,
) -> ClinicalResult:
    """Clinical precision / recall / F1 of generated against reference labels.

    Parameters
    ----------
    generated, reference : DataFrame
        The 14 CheXpert columns (1.0 / 0.0 / -1.0 / NaN), one row per item, same order.
    labeler : str
        Name of the labeler that produced ``generated`` (recorded in every row).
    reference_source : str, optional
        Where ``reference`` came from (default: ``labeler``).

    Returns
    -------
    ClinicalResult
        ``metrics`` keyed by :data:`CLINICAL_KEYS`; ``table`` as :meth:`ClinicalData.table`.

    Examples
    --------
    >>> import numpy as np
    >>> cols = list(CHEXPERT_LABELS)
    >>> g = pd.DataFrame([[np.nan] * 14], columns=cols); g["Edema"] = 1.0
    >>> r = g.copy()
    >>> clinical_f1(g, r, labeler="x").metrics["clinical.uncertain_as_negative.micro_5"]
    1.0
    """
    data = ClinicalData.build(
        generated, reference, labeler=labeler, reference_source=reference_source
    )
    return ClinicalResult(
        data.scores(), data.table(), data.labeler, data.reference_source, len(data)
    )


# --------------------------------------------------------------------------- labelers

_CHEXBERT_MISSING = (
    "the CheXbert labeler needs its checkpoint chexbert.pth (the Stanford "
    "AIMI CheXbert release, also the file the f1chexbert package fetches from "
    "StanfordAIMI/RRG_scorers) and the bert-base-uncased vocab.txt beside it or in the "
    "Hugging Face cache; download them yourself and pass --chexbert PATH or set "
    f"{CHEXBERT_ENV} (nothing is downloaded automatically), or use --labeler rule"
)


def _chexbert_cache_candidates() -> list[Path]:
    """Where f1chexbert / RadEval keep a downloaded ``chexbert.pth``, when they did."""
    home = Path.home()
    caches = [Path(os.environ.get("XDG_CACHE_HOME", home / ".cache")) / "chexbert"]
    hub = os.environ.get("HF_HUB_CACHE") or (
        Path(os.environ.get("HF_HOME", home / ".cache" / "huggingface")) / "hub"
    )
    found: list[Path] = []
    for cache in caches:
        found += [cache / "chexbert.pth"]
        found += sorted(cache.glob("models--*RRG_scorers/snapshots/*/chexbert.pth"))
    found += sorted(Path(hub).glob("models--StanfordAIMI--RRG_scorers/snapshots/*/chexbert.pth"))
    return [p for p in found if p.is_file()]


def find_chexbert_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The local CheXbert checkpoint: ``path``, else ``$CXR_CHEXBERT``, else a cache.

    The caches searched are those where the ``f1chexbert`` and ``radeval`` packages put
    the file when they downloaded it (``~/.cache/chexbert`` and the Hugging Face hub
    cache of ``StanfordAIMI/RRG_scorers``). Nothing is downloaded.

    Raises
    ------
    CxrError
        The given path does not exist, or no checkpoint was found (the message says
        what to download and where to put it).
    """
    for given, source in ((path, "--chexbert"), (os.environ.get(CHEXBERT_ENV), CHEXBERT_ENV)):
        if given:
            p = Path(given)
            if p.is_dir():
                p = p / "chexbert.pth"
            if not p.is_file():
                raise CxrError(
                    f"{source} {given}: no such CheXbert checkpoint; {_CHEXBERT_MISSING}"
                )
            return p
    cached = _chexbert_cache_candidates()
    if cached:
        return cached[0]
    raise CxrError(_CHEXBERT_MISSING)


_WS = re.compile(r"\s+")


class ChexbertLabeler:
    """CheXbert (Smit et al., EMNLP 2020) from a local checkpoint, as f1chexbert runs it.

    ``BertModel`` (bert-base-uncased configuration, built from the config: no weights
    are downloaded) + dropout + 13 four-way heads (blank, positive, negative, uncertain)
    + one two-way head for No Finding (blank, positive), on the [CLS] state. The
    checkpoint is loaded with ``torch.load(weights_only=True)``; its
    ``model_state_dict`` keys lose their ``module.`` prefix. Text preprocessing as
    f1chexbert: strip, newlines and runs of whitespace to one space, WordPiece, ``[CLS]``
    + up to 510 tokens + ``[SEP]``; an empty text is ``[CLS] [SEP]`` (CheXbert labels
    it like any text).

    Parameters
    ----------
    checkpoint : path-like
        ``chexbert.pth``.
    vocab : path-like, optional
        bert-base-uncased ``vocab.txt``; default: beside the checkpoint, else the
        Hugging Face cache (offline).
    device : str, optional
        Default ``cuda`` when available, else ``cpu``.
    config : transformers.BertConfig, optional
        Model configuration (default ``BertConfig()``, which is bert-base); for tests.
    batch_size : int
        Reports per forward pass.
    """

    name = CHEXBERT_LABELER_NAME

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        *,
        vocab: str | os.PathLike | None = None,
        device: str | None = None,
        config: object | None = None,
        batch_size: int = 16,
    ) -> None:
        import torch
        from torch import nn
        from transformers import BertConfig, BertModel, BertTokenizer

        self._torch = torch
        checkpoint = Path(checkpoint)
        self.tokenizer = self._tokenizer(BertTokenizer, checkpoint, vocab)
        config = config or BertConfig()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = nn.Module()
        model.bert = BertModel(config)
        model.dropout = nn.Dropout(0.1)
        hidden = config.hidden_size
        heads = [nn.Linear(hidden, 4) for _ in range(13)] + [nn.Linear(hidden, 2)]
        model.linear_heads = nn.ModuleList(heads)
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable file is a user error
            raise CxrError(f"{checkpoint}: not a readable CheXbert checkpoint ({err})") from None
        state = state.get("model_state_dict", state) if isinstance(state, dict) else None
        if not isinstance(state, dict):
            raise CxrError(f"{checkpoint}: no model_state_dict in the CheXbert checkpoint")
        state = {k.removeprefix("module."): v for k, v in state.items()}
        result = model.load_state_dict(state, strict=False)
        buffers = ("position_ids", "token_type_ids")
        missing = [k for k in result.missing_keys if not k.endswith(buffers)]
        unexpected = [k for k in result.unexpected_keys if not k.endswith(buffers)]
        if missing or unexpected:
            shown = ", ".join((missing + unexpected)[:4])
            raise CxrError(
                f"{checkpoint}: not a CheXbert checkpoint ({len(missing)} missing and "
                f"{len(unexpected)} unexpected weights, e.g. {shown})"
            )
        self.model = model.to(self.device).eval()
        self.batch_size = batch_size
        self.checkpoint = checkpoint

    @staticmethod
    def _tokenizer(cls: type, checkpoint: Path, vocab: str | os.PathLike | None):
        candidates = [Path(vocab)] if vocab else [checkpoint.parent / "vocab.txt"]
        for path in candidates:
            if path.is_file():
                return cls(vocab=str(path), do_lower_case=True)
        if vocab:
            raise CxrError(f"CheXbert vocab {vocab} does not exist")
        try:
            return cls.from_pretrained("bert-base-uncased", local_files_only=True)
        except Exception:  # not cached: say what to get
            raise CxrError(
                f"CheXbert needs the bert-base-uncased vocab.txt: put it beside "
                f"{checkpoint} or in the Hugging Face cache; {_CHEXBERT_MISSING}"
            ) from None

    def encode(self, text: object) -> list[int]:
        """Token ids of one report, as f1chexbert's ``tokenize`` makes them."""
        if text is None or (isinstance(text, float) and math.isnan(text)):
            text = ""
        clean = _WS.sub(" ", str(text).strip().replace("\n", " ")).strip()
        tokens = self.tokenizer.tokenize(clean)
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        if not tokens:
            return [cls_id, sep_id]
        ids = [cls_id] + self.tokenizer.convert_tokens_to_ids(tokens) + [sep_id]
        if len(ids) > 512:
            ids = ids[:511] + [sep_id]
        return ids

    def classes(self, texts: Sequence[object]) -> np.ndarray:
        """Predicted class of every head, shape (texts, 14), heads in :data:`CHEXBERT_ORDER`."""
        torch = self._torch
        out = np.zeros((len(texts), 14), dtype=np.int64)
        encoded = [self.encode(t) for t in texts]
        with torch.no_grad():
            for start in range(0, len(encoded), self.batch_size):
                batch = encoded[start : start + self.batch_size]
                width = max(len(ids) for ids in batch)
                ids = torch.zeros((len(batch), width), dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for i, seq in enumerate(batch):
                    ids[i, : len(seq)] = torch.tensor(seq)
                    mask[i, : len(seq)] = 1
                hidden = self.model.bert(
                    ids.to(self.device), attention_mask=mask.to(self.device)
                ).last_hidden_state[:, 0]
                hidden = self.model.dropout(hidden)
                for j, head in enumerate(self.model.linear_heads):
                    out[start : start + len(batch), j] = head(hidden).argmax(dim=1).cpu().numpy()
        return out

    def __call__(self, texts: Iterable[object]) -> pd.DataFrame:
        """Labels of many reports: one row per text, the 14 CheXpert columns.

        Head classes map 0 -> blank (NaN), 1 -> 1.0, 2 -> 0.0, 3 -> -1.0 (No Finding:
        0 -> blank, 1 -> 1.0).
        """
        texts = list(texts)
        classes = self.classes(texts)
        mapping = np.array([np.nan, 1.0, 0.0, -1.0])
        values = mapping[classes]
        frame = pd.DataFrame(values, columns=list(CHEXBERT_ORDER))
        return frame[list(CHEXPERT_LABELS)].astype(float)


def get_labeler(
    name: str, *, chexbert: str | os.PathLike | None = None
) -> tuple[Callable[[Iterable[object]], pd.DataFrame], str]:
    """A labeler function ``texts -> label frame`` and the name to record beside it.

    Parameters
    ----------
    name : str
        ``rule`` (``cxrlib-rule-v3``, pure Python) or ``chexbert``.
    chexbert : path-like, optional
        CheXbert checkpoint (else ``$CXR_CHEXBERT`` or a package cache).

    Raises
    ------
    CxrError
        Unknown name; CheXbert asked for but not available locally.
    """
    if name == "rule":

        def rule(texts: Iterable[object]) -> pd.DataFrame:
            # the 14 labels, then the laterality columns (grounding reads them)
            return label_reports(texts)

        return rule, LABELER_NAME
    if name == "chexbert":
        labeler = ChexbertLabeler(find_chexbert_checkpoint(chexbert))
        return labeler, CHEXBERT_LABELER_NAME
    raise CxrError(f"unknown labeler {name!r} (choose from {', '.join(LABELERS)})")
