"""What the dataset adapters share: the run summary, the privacy check, CSV reading.

Every adapter (``mimic``, ``chexpert_plus``, ``iu_xray``, ``wingspan``, ``folder``,
``chexmask``) turns a dataset's own layout into the one manifest schema of
:mod:`cxrlib.data.manifest`. This module holds the pieces they have in common:

- :class:`AdapterSummary`: rows kept, rows dropped per reason (each reason with its
  first examples, naming file and row), informational counts; written beside the
  manifest as ``<manifest>.summary.json`` (e.g. ``manifest.csv.summary.json``).
- the privacy check: manifests of credentialed or no-derivatives datasets are refused
  inside a git work tree unless explicitly allowed, and default to the user's cache
  folder (``$XDG_CACHE_HOME/cxrlib/manifests/``, else ``~/.cache/cxrlib/manifests/``);
- reading CSV and gzipped CSV with one-line errors that name the file and line;
- the row loop every adapter runs (:func:`write_rows`, or :func:`collect_rows` for the
  small datasets: one input item at a time, each giving its manifest rows or being
  dropped with a reason); :func:`write_rows` writes them a chunk at a time, holding
  one chunk of rows plus the ids and studies the checks over the whole table need;
- small helpers: whitespace collapsing, view lists, relative paths, binary masks.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from PIL import Image
from tqdm import tqdm

from cxrlib.base.errors import CxrError
from cxrlib.base.images import image_source
from cxrlib.base.storage import is_url
from cxrlib.data.manifest import CHEXPERT_LABELS, ManifestWriter, parse_label, write_manifest

PROTECTED_DATASETS: dict[str, str] = {
    "mimic-cxr": "credentialed (PhysioNet data use agreement)",
    "chexpert-plus": "credentialed (Stanford AIMI research use agreement)",
    "chexmask": "masks attached to a credentialed manifest",
    "iu-xray": "CC BY-NC-ND 4.0: derived copies of the text must not be committed",
}
"""Datasets whose manifests are never written inside a git work tree by default."""

_T = TypeVar("_T")

MAX_EXAMPLES = 5
"""How many example rows a summary keeps per drop reason."""

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
"""Image file types the adapters look for (lower-case; matching ignores case)."""


# --- the run summary -------------------------------------------------------------------


@dataclass
class AdapterSummary:
    """Rows kept and dropped (per reason) by one adapter run; nothing is lost silently.

    Attributes
    ----------
    dataset : str
        Adapter name, e.g. ``"mimic-cxr"``.
    unit : str
        What one manifest row is (``"image"`` or ``"report"``); ``kept`` and
        ``dropped`` count these.
    kept : int
        Rows written to the manifest.
    dropped : collections.Counter
        Rows dropped, per reason (e.g. ``{"missing_image": 3}``).
    examples : dict of str to list of str
        Up to :data:`MAX_EXAMPLES` lines per drop reason naming file and row.
    counts : dict of str to int
        Informational counts that are not drops (e.g. ``empty_findings`` kept,
        ``xxxx_tokens``).
    options : dict
        The options of the run, for reproducibility.
    manifest : str or None
        Path of the manifest once written.
    """

    dataset: str
    unit: str = "image"
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    manifest: str | None = None

    def drop(self, reason: str, where: str = "", n: int = 1) -> None:
        """Count ``n`` dropped rows under ``reason``; ``where`` names file and row."""
        self.dropped[reason] += n
        if where:
            shown = self.examples.setdefault(reason, [])
            if len(shown) < MAX_EXAMPLES:
                shown.append(where)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the informational counter ``name`` (created at 0)."""
        self.counts[name] = self.counts.get(name, 0) + int(n)

    @property
    def dropped_total(self) -> int:
        """All dropped rows, every reason together."""
        return int(sum(self.dropped.values()))

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON types, keys sorted where order is arbitrary."""
        return {
            "dataset": self.dataset,
            "manifest": self.manifest,
            "unit": self.unit,
            "kept": self.kept,
            "dropped_total": self.dropped_total,
            "dropped": dict(sorted(self.dropped.items())),
            "examples": {k: self.examples[k] for k in sorted(self.examples)},
            "counts": dict(sorted(self.counts.items())),
            "options": self.options,
        }

    def summary_path(self, manifest: str | os.PathLike) -> Path:
        """``<manifest>.summary.json``: the manifest's file name plus ``.summary.json``."""
        manifest = Path(manifest)
        return manifest.with_name(manifest.name + ".summary.json")

    def write(self, manifest: str | os.PathLike) -> Path:
        """Write ``<manifest>.summary.json`` beside the manifest; return its path."""
        self.manifest = str(manifest)
        path = self.summary_path(manifest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def describe(self) -> str:
        """Human-readable summary: kept, dropped per reason with examples, counts."""
        lines = [
            f"{self.dataset}: kept {self.kept} {self.unit}(s), dropped {self.dropped_total}"
            + (f" -> {self.manifest}" if self.manifest else "")
        ]
        for reason, n in sorted(self.dropped.items()):
            lines.append(f"  dropped {reason}: {n}")
            for example in self.examples.get(reason, []):
                lines.append(f"    e.g. {example}")
        for name, n in sorted(self.counts.items()):
            lines.append(f"  {name}: {n}")
        if self.manifest:
            lines.append(f"  summary: {self.summary_path(self.manifest)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def collect_rows(
    items: Iterable[_T],
    rows_of: Callable[[_T], list[dict[str, object]]],
    *,
    desc: str,
    unit: str,
) -> list[dict[str, object]]:
    """The manifest rows of every input item, in order, with a progress bar.

    Parameters
    ----------
    items : iterable
        The adapter's input units (metadata rows, images, reports), in manifest order.
    rows_of : callable
        The rows one item gives: ``[]`` when it is dropped (the reason already counted
        in the run's :class:`AdapterSummary`), one row, or several (a report's images).
    desc, unit : str
        Progress bar label and unit (shown only on a terminal).
    """
    rows: list[dict[str, object]] = []
    for item in tqdm(items, desc=desc, unit=unit, disable=None):
        rows.extend(rows_of(item))
    return rows


def write_rows(
    items: Iterable[_T],
    rows_of: Callable[[_T], list[dict[str, object]]],
    out: str | os.PathLike,
    summary: AdapterSummary,
    *,
    desc: str,
    unit: str,
) -> int:
    """Write the manifest rows of every input item as they come, a chunk at a time.

    What :func:`collect_rows` then :func:`finish` do, without holding every row: the
    rows go through a :class:`~cxrlib.data.manifest.ManifestWriter` (validated, written
    atomically, byte-identical to :func:`~cxrlib.data.manifest.write_manifest` of all
    rows). The summary is not written: the caller adds its last counts, then
    ``summary.write(out)``.

    Parameters
    ----------
    items, rows_of, desc, unit
        As for :func:`collect_rows`.
    out : path-like
        Manifest path.
    summary : AdapterSummary
        The run's counts; ``kept`` is set to the number of rows written.

    Returns
    -------
    int
        Rows written.

    Raises
    ------
    CxrError
        No row is left (the message names the drop reasons, as :func:`finish`).
    """
    out = Path(out)
    with ManifestWriter(out) as writer:
        for item in tqdm(items, desc=desc, unit=unit, disable=None):
            writer.add(rows_of(item))
        kept = writer.close()
    if kept == 0:
        raise _no_rows(out, summary)
    summary.kept = kept
    return kept


def _no_rows(out: Path, summary: AdapterSummary) -> CxrError:
    """The error of a run that dropped every row, naming the reasons."""
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.dropped.items())) or "no input"
    return CxrError(f"{out}: no rows left to write ({summary.dataset}; dropped: {reasons})")


def finish(df: pd.DataFrame, out: str | os.PathLike, summary: AdapterSummary) -> AdapterSummary:
    """Write the manifest (validated, atomic) and its summary; return the summary.

    Parameters
    ----------
    df : pandas.DataFrame
        Manifest rows (schema of :mod:`cxrlib.data.manifest`); may be empty, in which
        case an error explains that every row was dropped and why.
    out : path-like
        Manifest path.
    summary : AdapterSummary
        The run's counts; ``kept`` is set to ``len(df)`` here.
    """
    out = Path(out)
    if len(df) == 0:
        raise _no_rows(out, summary)
    summary.kept = len(df)
    # relative paths such as ../data/x.png only resolve once the folder exists
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(df, out)
    summary.write(out)
    return summary


# --- privacy: where manifests may be written -------------------------------------------


def cache_dir() -> Path:
    """The user's cache folder for cxrlib: ``$XDG_CACHE_HOME/cxrlib`` or ``~/.cache/cxrlib``.

    ``XDG_CACHE_HOME`` is honoured only when it is an absolute path (the XDG rule).
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "cxrlib"


def default_manifest_path(dataset: str) -> Path:
    """Default ``--out`` of a protected dataset: ``<cache>/manifests/<dataset>/manifest.csv``."""
    return cache_dir() / "manifests" / dataset / "manifest.csv"


def git_work_tree(path: str | os.PathLike) -> Path | None:
    """The git work tree containing ``path`` (which need not exist yet), or None.

    Walks up from the path (symlinks resolved) looking for a ``.git`` entry, a folder
    in a normal clone or a file in a worktree or submodule.
    """
    p = Path(path).expanduser().absolute().resolve()
    for folder in (p, *p.parents):
        if (folder / ".git").exists():
            return folder
    return None


def check_out_path(
    out: str | os.PathLike | None, *, dataset: str, allow_in_repo: bool = False
) -> Path:
    """The manifest path to write, after the privacy check.

    Parameters
    ----------
    out : path-like or None
        The requested manifest path; None gives :func:`default_manifest_path` for
        protected datasets and is an error otherwise.
    dataset : str
        Adapter name; those in :data:`PROTECTED_DATASETS` are refused inside a git
        work tree unless ``allow_in_repo``.
    allow_in_repo : bool
        Permit writing a protected manifest inside a git work tree.

    Raises
    ------
    CxrError
        When a protected manifest would land inside a git work tree, or ``out`` is
        missing for an unprotected dataset, or ``out`` is an existing folder.
    """
    if out is None:
        if dataset not in PROTECTED_DATASETS:
            raise CxrError(f"{dataset}: --out FILE is required")
        path = default_manifest_path(dataset)
    else:
        path = Path(out).expanduser()
    if path.is_dir():
        raise CxrError(
            f"{path}: --out must be a manifest file path (e.g. manifest.csv), not a folder"
        )
    if dataset in PROTECTED_DATASETS and not allow_in_repo:
        tree = git_work_tree(path)
        if tree is not None:
            raise CxrError(
                f"{path}: refusing to write a {dataset} manifest inside the git work tree "
                f"{tree} ({PROTECTED_DATASETS[dataset]}); choose --out outside it "
                f"(default {default_manifest_path(dataset)}) or pass --allow-in-repo"
            )
    return path


# --- reading tables -------------------------------------------------------------------


def find_file(root: str | os.PathLike, names: Sequence[str]) -> Path:
    """The first of ``names`` that exists in ``root``; CxrError naming them all otherwise."""
    root = Path(root)
    for name in names:
        if (root / name).is_file():
            return root / name
    raise CxrError(f"{root}: none of {', '.join(names)} found")


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 (closed by the caller)


def iter_csv(
    path: str | os.PathLike, required: Iterable[str] = ()
) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a CSV or CSV.GZ file as ``(line, {column: text})``, strictly checked.

    ``line`` is the file line where the row starts (the header is line 1). Every row
    must have as many fields as the header. Cells are strings exactly as in the file.

    Parameters
    ----------
    path : path-like
        ``.csv`` or ``.csv.gz``.
    required : iterable of str
        Columns that must be in the header.

    Raises
    ------
    CxrError
        One line naming file and line: file missing, not UTF-8, not gzip, empty, a
        required column missing, a row with the wrong number of fields.
    """
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"{path}: file does not exist")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # RLE and report cells are long
    line = 1
    try:
        with _open_text(path) as handle:
            reader = csv.reader(handle)
            try:
                header = next(reader)
            except StopIteration:
                raise CxrError(f"{path}: empty file (no header)") from None
            missing = [c for c in required if c not in header]
            if missing:
                raise CxrError(
                    f"{path}:1: missing column(s) {', '.join(repr(c) for c in missing)} "
                    f"(found {len(header)} columns: {', '.join(header[:8])}"
                    f"{', ...' if len(header) > 8 else ''})"
                )
            width = len(header)
            line = reader.line_num + 1
            for fields in reader:
                start, line = line, reader.line_num + 1
                if not fields:
                    continue  # blank line
                if len(fields) != width:
                    raise CxrError(
                        f"{path}:{start}: malformed row: {len(fields)} fields, header has {width}"
                    )
                yield start, dict(zip(header, fields, strict=True))
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error, csv.Error) as err:
        raise CxrError(f"{path}:{line}: unreadable ({type(err).__name__}: {err})") from None


def note_first_line(seen: dict[Any, int], key: Any, line: int, where: str, column: str) -> None:
    """Record that ``key`` (a ``column`` value) first appears on ``line``.

    Raises
    ------
    CxrError
        ``key`` was seen before: ``<where>: duplicate <column> <key> (first on line N)``.
    """
    if key in seen:
        raise CxrError(f"{where}: duplicate {column} {key!r} (first on line {seen[key]})")
    seen[key] = line


def label_value(cell: object, where: str, column: str) -> float:
    """One CheXpert label cell as 1.0, 0.0, -1.0 or NaN; CxrError naming file and row."""
    try:
        return parse_label(cell)
    except CxrError as err:
        raise CxrError(f"{where}: column {column!r}: {err}") from None


def blank_labels() -> dict[str, float]:
    """The 14 CheXpert labels, all blank (NaN)."""
    return {label: float("nan") for label in CHEXPERT_LABELS}


# --- small shared helpers ---------------------------------------------------------------


def collapse_whitespace(text: str | None) -> str:
    """Runs of whitespace (spaces, tabs, newlines) to one space, ends stripped; None to ``""``."""
    return " ".join(text.split()) if text else ""


def parse_views(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"PA,AP"`` (or a sequence) to upper-case view names ``("PA", "AP")``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    views = tuple(v.strip().upper() for v in items if v.strip())
    if not views:
        raise CxrError(f"--views: no view given in {text!r}")
    return views


def relative_to(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """``path`` relative to ``folder`` (``os.path.relpath`` of absolute paths), ``/``-separated."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    return rel.replace(os.sep, "/")


def index_images(folder: str | os.PathLike) -> dict[str, Path]:
    """Image files under ``folder`` (recursive) by file stem; first in sorted order wins.

    Returns
    -------
    dict of str to Path
        ``{stem: path}`` for files whose suffix (any case) is in :data:`IMAGE_SUFFIXES`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CxrError(f"{folder}: image folder does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            found.setdefault(path.stem, path)
    return found


def image_readable(path: Path) -> str | None:
    """None when ``path`` opens as an image with PIL, else a short reason."""
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception as err:  # PIL raises many types for broken files
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def image_size(path: Path | str) -> tuple[int, int]:
    """``(height, width)`` of an image from its header (a local path or a URL)."""
    source = image_source(path, "image")[1] if is_url(path) else path
    with Image.open(source) as im:
        width, height = im.size
    return height, width


def safe_relative_id(image_id: str) -> str:
    """An image id usable as a relative file path under a mask folder (no ``..``, no root)."""
    parts = [p for p in image_id.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        raise CxrError(f"image id {image_id!r} cannot name a file")
    return "/".join(parts)
