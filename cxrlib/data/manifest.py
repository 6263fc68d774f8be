"""The manifest: one CSV row per image, the one schema every dataset lands in.

Every adapter (phantom, MIMIC-CXR, CheXpert Plus, IU X-ray, Wingspan, folder) writes
this schema and every notebook reads it, so a notebook works on any dataset.

Columns (``data_manifests/README.md`` documents them; a test keeps the two equal):

- required: ``study_id, image_id, image_path, view, split, findings`` and the 14
  CheXpert observations, named exactly as :data:`CHEXPERT_LABELS`;
- optional: :data:`OPTIONAL_COLUMNS` (patient id, organ mask paths and the finding
  region mask path);
- anything else (e.g. the phantom's attribute columns) is kept as is.

Paths are relative to the manifest's folder (absolute paths and fsspec URLs such as
``gs://bucket/x.png`` are allowed: :mod:`cxrlib.base.storage`). Labels take
CheXpert values: ``1`` positive, ``0`` negative, ``-1`` uncertain, blank not mentioned;
in memory they are floats with NaN for blank.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlib.base import storage
from cxrlib.base.errors import CxrError, ManifestError
from cxrlib.base.io import WriteError, read_json_object, remove_quietly, write_atomic

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""The 14 CheXpert observation columns, in the CheXpert order."""

CORE_COLUMNS: tuple[str, ...] = ("study_id", "image_id", "image_path", "view", "split", "findings")
REQUIRED_COLUMNS: tuple[str, ...] = CORE_COLUMNS + CHEXPERT_LABELS

MASK_COLUMNS: tuple[str, ...] = (
    "lung_mask_path",
    "left_lung_mask_path",
    "right_lung_mask_path",
    "heart_mask_path",
)
"""Mask paths: both lungs (binary), each lung (patient's left/right), heart."""

FINDING_MASK_COLUMN = "finding_mask_path"
"""Path of a 16-bit PNG of drawn finding regions (the phantom's): bit ``k`` of a pixel is
set where the region of ``CHEXPERT_LABELS[k]`` covers it (:func:`finding_regions`)."""

OPTIONAL_COLUMNS: tuple[str, ...] = ("patient_id",) + MASK_COLUMNS + (FINDING_MASK_COLUMN,)

SPLITS: tuple[str, ...] = ("train", "validate", "test")
SPLIT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)
"""Default train/validate/test fractions for hash-based splits."""

LABEL_VALUES = (1.0, 0.0, -1.0)


def finding_regions(bits: np.ndarray) -> dict[str, np.ndarray]:
    """Decode a finding region mask (:data:`FINDING_MASK_COLUMN`): observation -> bool
    (H, W) region, for every observation whose bit is set somewhere.

    Examples
    --------
    >>> bits = np.array([[0, 1 << 10], [1 << 10 | 1 << 3, 0]], dtype=np.uint16)
    >>> regions = finding_regions(bits)
    >>> sorted(regions), regions["Lung Opacity"].tolist()
    (['Lung Opacity', 'Pleural Effusion'], [[False, False], [True, False]])
    """
    bits = np.asarray(bits)
    if bits.dtype.kind not in "ui":
        raise ValueError(f"a finding region mask holds integers, got {bits.dtype}")
    out = {}
    for k, name in enumerate(CHEXPERT_LABELS):
        region = (bits.astype(np.int64) >> k) & 1 == 1
        if region.any():
            out[name] = region
    return out


def assign_split(
    study_id: str, seed: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS
) -> str:
    """Split of a study from a seeded hash of its id.

    The same ``(study_id, seed)`` always gives the same split, on any machine and in
    any order of processing, so splits never depend on row order and all images of a
    study share a split.

    Parameters
    ----------
    study_id : str
        The study's id.
    seed : int
        Split seed; a different seed reshuffles studies between splits.
    fractions : (float, float, float)
        Train, validate, test fractions; must sum to 1.

    Returns
    -------
    str
        ``"train"``, ``"validate"`` or ``"test"``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    digest = hashlib.sha256(f"{seed}:{study_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "validate"
    return "test"


_LABEL_TEXT = re.compile(r"^(-?1|0)(\.0*)?$")


def parse_label(value: object) -> float:
    """One CheXpert label cell as a float: 1.0, 0.0, -1.0, or NaN for blank.

    Accepts ``1``, ``0``, ``-1`` as numbers or strings (``"1.0"`` too) and blank
    (``""``, ``None``, NaN, ``pd.NA``). Raises ``CxrError`` naming the value otherwise
    (``"nan"``, ``"yes"``, ``2``, ``0.5``...).
    """
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return float("nan")
        if not _LABEL_TEXT.match(text):
            raise CxrError(f"label value {value!r} is not one of 1, 0, -1, blank")
        return float(text) + 0.0  # -0.0 -> 0.0
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return float("nan")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CxrError(f"label value {value!r} is not one of 1, 0, -1, blank") from None
    if np.isnan(number):
        return float("nan")
    if number not in LABEL_VALUES:
        raise CxrError(f"label value {value!r} is not one of 1, 0, -1, blank")
    return number + 0.0


def format_label(value: float) -> str:
    """Inverse of :func:`parse_label` for writing: ``"1"``, ``"0"``, ``"-1"`` or ``""``."""
    number = parse_label(value)
    return "" if np.isnan(number) else str(int(number))


def resolve(root: str | os.PathLike, path: str) -> Path | str:
    """Path of a manifest cell: relative cells are relative to the manifest's folder
    (a URL when the manifest is at one); a URL cell (``gs://...``) stays a string."""
    if not storage.is_url(path) and not storage.is_url(root):
        p = Path(path)
        return p if p.is_absolute() else Path(root) / p
    return storage.join(root, path)


def text_cell(value: object) -> str:
    """A text cell, stripped; blank for None/NaN/NA."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return str(value).strip()


def _is_file(path: Path | str) -> bool:
    """Whether ``path`` is a file; False also for a path the system refuses to look up
    (a name too long, a loop of links): a cell naming it does not name a file. A URL is
    looked up through fsspec (CxrError when it cannot be: :func:`storage.is_file`)."""
    if storage.is_url(path):
        return storage.is_file(path)
    try:
        return path.is_file()
    except OSError:
        return False


def _missing_files(df: pd.DataFrame, root: str | os.PathLike, paths: pd.Series) -> list:
    """``(row, message)`` for every image or mask cell that names no file. URLs are looked
    up on 16 threads (one request each); one that cannot be looked up says why."""
    cells = [("image_path", paths)] + [
        (c, df[c].map(text_cell)) for c in (*MASK_COLUMNS, FINDING_MASK_COLUMN) if c in df.columns
    ]
    found, remote = [], []
    for col, column in cells:
        for i, cell in enumerate(column):
            if not cell:
                continue
            path = resolve(root, cell)
            if storage.is_url(path):
                remote.append((i, col, cell, path))
            elif not _is_file(path):
                found.append((i, f"{col} {cell!r} does not exist"))

    def look_up(item: tuple) -> tuple[int, str] | None:
        i, col, cell, url = item
        try:
            return None if storage.is_file(url) else (i, f"{col} {cell!r} does not exist")
        except CxrError as err:
            return (i, f"{col} {cell!r}: {str(err).removeprefix(f'{url}: ')}")

    if remote:
        with ThreadPoolExecutor(max_workers=16) as pool:
            found += [hit for hit in pool.map(look_up, remote) if hit is not None]
    return found


def is_text_only(df: pd.DataFrame) -> bool:
    """True when no row has an image: a text-only manifest (reports without images)."""
    return len(df) > 0 and bool((df["image_path"].map(text_cell) == "").all())


def validate(
    df: pd.DataFrame,
    root: str | os.PathLike,
    *,
    name: str = "manifest",
    check_files: bool = True,
    first_line: int = 2,
    text_only: bool | None = None,
) -> list[str]:
    """Every problem of a manifest, one line each, naming the CSV line.

    Line numbers are those of the CSV file (the header is line 1, so row ``i`` of
    ``df`` is line ``i + first_line``; a later chunk of a manifest written a chunk at a
    time starts further down: :class:`ManifestWriter`). ``text_only`` overrides whether
    the rows belong to a text-only manifest (default: whether no row of ``df`` has an
    image). Checks: required columns present; ``study_id`` and
    ``image_id`` non-empty; ``image_id`` unique; ``split`` in :data:`SPLITS`; all
    images of a study in one split; labels in {1, 0, -1, blank}; image and mask files
    exist (when ``check_files``). An empty ``image_path`` is allowed only when every
    row has one (a text-only manifest).

    Returns
    -------
    list of str
        Empty when the manifest is valid.
    """
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        return [f"{name}: missing column(s): {', '.join(missing)}"]
    if len(df) == 0:
        return [f"{name}: no rows"]

    def line(i: int) -> str:
        return f"{name}:{i + first_line}"

    found: list[tuple[int, str]] = []  # (row, message), sorted by row at the end
    text = {c: df[c].map(text_cell) for c in CORE_COLUMNS}
    for col in ("study_id", "image_id"):
        for i in np.flatnonzero((text[col] == "").to_numpy()):
            found.append((i, f"empty {col}"))
    ids = text["image_id"]
    dup = (ids.duplicated(keep="first") & (ids != "")).to_numpy()
    first_row = {v: i for i, v in reversed(list(enumerate(ids)))}
    for i in np.flatnonzero(dup):
        found.append(
            (
                i,
                f"duplicate image_id {ids.iloc[i]!r} "
                f"(first on line {first_row[ids.iloc[i]] + first_line})",
            )
        )
    bad_split = ~text["split"].isin(SPLITS).to_numpy()
    for i in np.flatnonzero(bad_split):
        found.append((i, f"unknown split {text['split'].iloc[i]!r} (expected one of {SPLITS})"))
    # all images of a study share a split (otherwise a study leaks across splits)
    ok = ~bad_split & (text["study_id"] != "").to_numpy()
    per_study = pd.DataFrame({"study": text["study_id"][ok], "split": text["split"][ok]})
    n_splits = per_study.groupby("study")["split"].nunique()
    leaking = n_splits.index[n_splits > 1]
    study_of = text["study_id"].to_numpy()
    rows_of: dict[str, list[int]] = {}  # one pass over the rows, not one per study
    for i in np.flatnonzero(ok & text["study_id"].isin(leaking).to_numpy()):
        rows_of.setdefault(study_of[i], []).append(int(i))
    for study in leaking:
        rows = rows_of[study]  # ascending manifest rows
        lines = ", ".join(str(r + first_line) for r in rows)
        found.append((rows[0], f"study {study!r} has images in several splits (lines {lines})"))
    text_only = is_text_only(df) if text_only is None else text_only
    paths = text["image_path"]
    for i in np.flatnonzero((paths == "").to_numpy()):
        if not text_only:
            found.append((i, "empty image_path in a manifest with images"))
    if check_files:
        found += _missing_files(df, root, paths)
    for label in CHEXPERT_LABELS:
        column = df[label]
        for value in pd.unique(column.astype(object)):
            try:
                parse_label(value)
            except CxrError as err:
                same = (column.astype(object).map(repr) == repr(value)).to_numpy(dtype=bool)
                for i in np.flatnonzero(same):
                    found.append((i, f"column {label!r}: {err}"))
    found.sort(key=lambda item: item[0])
    problems += [f"{line(i)}: {message}" for i, message in found]
    return problems


def summary_path(path: str | os.PathLike) -> Path:
    """Where an adapter records a manifest's provenance: ``<manifest>.summary.json``."""
    path = Path(path)
    return path.with_name(path.name + ".summary.json")


@dataclass(frozen=True)
class Manifest:
    """A manifest's rows with the folder their relative paths resolve against.

    What travels wherever a manifest goes: ``frame`` (one row per image, as
    :meth:`read` parses it), ``root`` (the manifest's folder), ``path`` (the CSV it was
    read from, None for one built in memory) and ``summary`` (the adapter's
    ``<manifest>.summary.json``, its provenance, when present). Row selections
    (:meth:`split`, :meth:`subset`) keep the root, so paths resolve from any of them.
    """

    frame: pd.DataFrame
    root: Path | str  # a URL (str) for a manifest read from one
    path: Path | str | None = None
    summary: dict | None = None

    @classmethod
    def read(cls, path: str | os.PathLike, *, check_files: bool = True) -> Manifest:
        """Read and validate a manifest; refuse it with every problem listed.

        Parameters
        ----------
        path : path-like
            The manifest CSV.
        check_files : bool
            Also check that every image and mask file exists.

        Returns
        -------
        Manifest
            ``frame`` has one row per image. Text columns are strings (blank cells
            ``""``); the 14 label columns are float64 with values in {1, 0, -1, NaN}.
            ``root`` is the manifest's folder.

        Raises
        ------
        ManifestError
            When the file is missing, is not a readable CSV, or fails :func:`validate`.

        A manifest at a URL (``gs://bucket/m.csv``) is read through fsspec; its relative
        cells resolve against the URL's folder (``root`` is then that URL).
        """
        url = storage.is_url(path)
        path = path if url else Path(path)
        df = _read_frame(path)
        root = storage.parent(path) if url else path.parent
        problems = validate(df, root, name=str(path), check_files=check_files)
        if problems:
            raise ManifestError(str(path), problems)
        for label in CHEXPERT_LABELS:
            df[label] = df[label].map(parse_label).astype("float64")
        summary = _url_summary(path) if url else read_json_object(summary_path(path))
        return cls(df, root, path, summary)

    def __len__(self) -> int:
        return len(self.frame)

    def resolve(self, cell: str) -> Path | str:
        """Path of a cell of this manifest (relative cells resolve against ``root``)."""
        return resolve(self.root, cell)

    def subset(self, rows: pd.DataFrame | pd.Series | np.ndarray) -> Manifest:
        """The same manifest restricted to ``rows``: a frame of its rows (e.g.
        ``m.frame.iloc[:4]``) or a boolean mask over ``frame``."""
        frame = rows if isinstance(rows, pd.DataFrame) else self.frame[rows]
        return replace(self, frame=frame)

    def split(self, name: str) -> Manifest:
        """The rows of split ``name``."""
        return self.subset(self.frame["split"] == name)


def _read_frame(path: Path | str) -> pd.DataFrame:
    """The manifest CSV as strings; ManifestError when it is missing or not a CSV."""
    if storage.is_url(path):
        try:
            source: Path | str | io.BytesIO = io.BytesIO(storage.read_bytes(path, "manifest"))
        except CxrError as err:
            raise ManifestError(str(path), [str(err)]) from None
    elif not Path(path).is_file():
        raise ManifestError(str(path), [f"{path}: file does not exist"])
    else:
        source = path
    try:
        return pd.read_csv(source, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ManifestError(str(path), [f"{path}: not a readable CSV ({first})"]) from None


def _url_summary(url: str) -> dict | None:
    """The ``<manifest>.summary.json`` beside a manifest URL, or None (as
    :func:`~cxrlib.base.io.read_json_object`)."""
    try:
        value = json.loads(storage.read_bytes(url + ".summary.json", "summary"))
    except (CxrError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_manifest(path: str | os.PathLike, *, check_files: bool = True) -> Manifest:
    """:meth:`Manifest.read`: read and validate the manifest CSV at ``path``."""
    return Manifest.read(path, check_files=check_files)


def ordered_columns(columns: Iterable[str]) -> list[str]:
    """Schema order: required, then optional present, then the rest as given."""
    columns = list(columns)
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    optional = [c for c in OPTIONAL_COLUMNS if c in columns]
    extra = [c for c in columns if c not in known]
    return list(REQUIRED_COLUMNS) + optional + extra


def write_manifest(df: pd.DataFrame, path: str | os.PathLike, *, check_files: bool = True) -> Path:
    """Validate ``df`` against the folder of ``path``, then write it atomically.

    Labels are written as ``1``, ``0``, ``-1`` or blank; columns in schema order.
    The file appears complete or not at all (written to a temporary name, then
    renamed). Raises :class:`ManifestError` listing every problem, writing nothing.
    """
    path = Path(path)
    out = _with_label_columns(df.copy())
    # the folder first: relative paths like ../data/x.png resolve only through it
    path.parent.mkdir(parents=True, exist_ok=True)
    problems = validate(out, path.parent, name=str(path), check_files=check_files)
    if problems:
        raise ManifestError(str(path), problems)
    for label in CHEXPERT_LABELS:
        out[label] = out[label].map(format_label)
    out = out[ordered_columns(out.columns)]
    return write_atomic(path, lambda tmp: out.to_csv(tmp, index=False, lineterminator="\n"))


def _with_label_columns(out: pd.DataFrame) -> pd.DataFrame:
    """``out`` with every CheXpert label column (missing ones blank), in place."""
    for label in CHEXPERT_LABELS:
        if label not in out.columns:
            out[label] = float("nan")
    return out


CHUNK_ROWS = 10_000
"""Rows a :class:`ManifestWriter` holds before validating and appending them."""


def _cell_text(value: object) -> str:
    """A non-label cell as written: blank for None/NaN/NA, else ``str(value)`` (what
    pandas writes for a column of one type: text, integers, floats, booleans)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return ""
    return value if isinstance(value, str) else str(value)


def _problem_line(problem: str, name: str) -> int:
    """The CSV line a :func:`validate` problem names (0 when it names none)."""
    head = problem.removeprefix(f"{name}:").split(":", 1)[0]
    return int(head) if head.isdigit() else 0


class ManifestWriter:
    """Write a manifest a chunk of rows at a time, as :func:`write_manifest` would.

    Rows (dicts of the manifest schema, in manifest order) are buffered; every
    :data:`CHUNK_ROWS` of them are validated (:func:`validate`, line numbers of the
    whole file) and appended to a temporary file beside ``path``, renamed to ``path``
    by :meth:`close`. Memory holds one chunk plus what the checks over the whole table
    need: the first line of every ``image_id`` (duplicates) and the split of every
    study (a study in several splits). The file written is byte-identical to
    ``write_manifest(pd.DataFrame(rows), path)``: non-label cells are written as
    ``str(value)`` (blank for None/NaN), labels as ``1``, ``0``, ``-1`` or blank, columns
    in schema order of the first chunk's keys; a later row may lack a column (blank)
    but not bring a new one.

    Use as a context manager: leaving it by an exception removes the temporary file.
    """

    def __init__(
        self, path: str | os.PathLike, *, check_files: bool = True, chunk_rows: int | None = None
    ):
        self.path = Path(path)
        self.check_files = check_files
        self.chunk_rows = int(chunk_rows or CHUNK_ROWS)
        self.rows = 0  # rows validated so far
        self.problems: list[str] = []
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._handle: io.TextIOBase | None = None
        self._buffer: list[dict[str, object]] = []
        self._columns: list[str] | None = None
        self._id_line: dict[str, int] = {}
        self._study_split: dict[str, tuple[str, int]] = {}
        self._text_rows = 0  # rows before the first with an image (all without one)
        self._has_images = False

    def __enter__(self) -> ManifestWriter:
        return self

    def __exit__(self, kind: object, err: object, tb: object) -> None:
        if err is not None:
            self.discard()

    def add(self, rows: Iterable[dict[str, object]]) -> None:
        """Append rows; a full chunk is validated and written."""
        self._buffer.extend(rows)
        while len(self._buffer) >= self.chunk_rows:
            chunk, self._buffer = self._buffer[: self.chunk_rows], self._buffer[self.chunk_rows :]
            self._flush(chunk)

    def discard(self) -> None:
        """Remove the temporary file; nothing is written at ``path``."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        remove_quietly(self._tmp)

    def close(self) -> int:
        """Write the last chunk and rename the file to ``path``; return the row count.

        Raises :class:`ManifestError` listing every problem (writing nothing) and
        :class:`~cxrlib.base.io.WriteError` when the system refuses the write.
        """
        if self._buffer:
            chunk, self._buffer = self._buffer, []
            self._flush(chunk)
        if self.problems or self._handle is None:
            self.discard()
            if self.problems:
                problems = sorted(self.problems, key=lambda p: _problem_line(p, str(self.path)))
                raise ManifestError(str(self.path), problems)
            return 0
        try:
            self._handle.close()
            self._handle = None
            os.replace(self._tmp, self.path)
        except OSError as err:
            self.discard()
            raise WriteError(self.path, err) from err
        return self.rows

    def _flush(self, rows: list[dict[str, object]]) -> None:
        """Validate one chunk (line numbers of the whole file) and append it."""
        first_line = self.rows + 2
        out = _with_label_columns(pd.DataFrame(rows))
        # the folder first: relative paths like ../data/x.png resolve only through it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        problems = validate(
            out,
            self.path.parent,
            name=str(self.path),
            check_files=self.check_files,
            first_line=first_line,
            text_only=self._text_only(out, first_line),
        )
        if "image_path" in out.columns:  # else validate said so
            problems += self._across_chunks(out, first_line)
        self.rows += len(out)
        self.problems += problems
        if self.problems:
            return  # keep validating, write nothing more
        for column in out.columns:
            cell = format_label if column in CHEXPERT_LABELS else _cell_text
            out[column] = out[column].map(cell)
        columns = ordered_columns(out.columns)
        if self._columns is None:
            self._columns = columns
        elif not set(columns) <= set(self._columns):
            new = ", ".join(c for c in columns if c not in self._columns)
            raise CxrError(f"{self.path}:{first_line}: rows from here on add column(s) {new}")
        out = out.reindex(columns=self._columns, fill_value="")
        try:
            if self._handle is None:
                self._handle = open(self._tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115
            out.to_csv(self._handle, header=first_line == 2, index=False, lineterminator="\n")
        except OSError as err:
            self.discard()
            raise WriteError(self.path, err) from err

    def _text_only(self, out: pd.DataFrame, first_line: int) -> bool:
        """Whether the chunk's rows without an image are allowed (no row so far has one);
        records the rows of the manifest so far that lack an image when one appears."""
        if "image_path" not in out.columns:
            return True
        if not self._has_images and (out["image_path"].map(text_cell) != "").any():
            self._has_images = True
            name = str(self.path)
            self.problems += [
                f"{name}:{line}: empty image_path in a manifest with images"
                for line in range(2, 2 + self._text_rows)
            ]
        if not self._has_images:
            self._text_rows += len(out)
        return not self._has_images

    def _across_chunks(self, out: pd.DataFrame, first_line: int) -> list[str]:
        """Problems between this chunk and earlier ones: an ``image_id`` seen before, a
        study already in another split; records this chunk's ids and studies."""
        name = str(self.path)
        problems = []
        ids = out["image_id"].map(text_cell).tolist()
        studies = out["study_id"].map(text_cell).tolist()
        splits = out["split"].map(text_cell).tolist()
        for i, image_id in enumerate(ids):
            first = self._id_line.get(image_id)
            if image_id and first is not None and first < first_line:
                problems.append(
                    f"{name}:{first_line + i}: duplicate image_id {image_id!r} "
                    f"(first on line {first})"
                )
            elif image_id and first is None:
                self._id_line[image_id] = first_line + i
        told: set[str] = set()
        for i, (study, split) in enumerate(zip(studies, splits, strict=True)):
            if not study or split not in SPLITS:
                continue
            seen = self._study_split.get(study)
            if seen is None:
                self._study_split[study] = (split, first_line + i)
            elif seen[0] != split and seen[1] < first_line and study not in told:
                told.add(study)
                problems.append(  # named on the study's first line, as validate does
                    f"{name}:{seen[1]}: study {study!r} has images in several splits "
                    f"({seen[0]} on line {seen[1]}, {split} on line {first_line + i})"
                )
        return problems
