"""The README's "Running on MIMIC-CXR" section, generated from benchmark files.

``cxr bench costs --scale S.json --gpu G.json --readme README.md`` writes, between the
markers :data:`START` and :data:`END`, the per-stage table of a ``cxr bench scale`` run
(time, ms per image, peak RSS, disk at each N) and the cost table of the full profile on
MIMIC-CXR-JPG and CheXpert Plus. Every figure is either read from those files
(*measured*) or computed from them by the formula printed beside it (*projection*);
``--check`` fails when the README differs, as ``cxr workbook readme --check`` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cxrlib.base.errors import CxrError
from cxrlib.base.io import write_atomic
from cxrlib.experiment.results import replace_section

START = "<!-- costs:start -->"
END = "<!-- costs:end -->"

DATASETS = (("MIMIC-CXR-JPG", 377_110), ("CheXpert Plus", 223_462))
"""Images of each release (MIMIC-CXR-JPG 2.0.0: 377,110 images; CheXpert Plus: 223,462
image-report pairs)."""

FEATURE_BYTES = 1024 * 384 * 2
"""One image's cached encoder features at the published sizes: 1,024 patches x 384
dims in float16."""

CORES = 2
"""Cores of the machine the scale run measured on (per-core figures divide by it)."""


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:,.1f} GB"


def _hours(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:,.1f} h" if hours >= 1 else f"{seconds / 60:,.0f} min"


def _stage(scale: dict, stage: str, n: int | None = None) -> dict:
    rows = [r for r in scale["stages"] if r["stage"] == stage]
    if n is not None:
        rows = [r for r in rows if r["n"] == n]
    if not rows:
        raise CxrError(f"the scale run has no {stage!r} stage" + (f" at n={n}" if n else ""))
    return max(rows, key=lambda r: r["n"])  # the largest N measured


def stage_table(scale: dict) -> list[str]:
    """Markdown rows: each stage's seconds, ms per image, peak RSS and disk at every N,
    and its peak RSS growth (:func:`rss_growth`)."""
    sizes = scale["sizes"]
    top = sorted(sizes)[-2:]
    span = f"{top[0]:,} to {top[-1]:,}" if len(top) > 1 else "n/a"
    head = "| stage | images | " + " | ".join(f"N = {n:,}" for n in sizes)
    head += f" | RSS growth, N = {span} |"
    lines = [head, "| --- | --- | " + " | ".join("---:" for _ in sizes) + " | ---: |"]
    by = {(r["stage"], r["n"]): r for r in scale["stages"]}
    kinds = {"all": "all N", "sample": f"{scale['sample']} of N", "few": "a few"}
    for stage in dict.fromkeys(r["stage"] for r in scale["stages"]):
        cells, kind = [], "all"
        for n in sizes:
            r = by.get((stage, n))
            if r is None:
                cells.append("not run")
                continue
            kind = r.get("kind", "all")
            disk = f", {r['disk_bytes'] / 2**20:,.0f} MB" if r["disk_bytes"] else ""
            cells.append(
                f"{r['seconds']:,.1f} s, {r['per_image_ms']:,.2f} ms/img, "
                f"{r['peak_rss_mb']:,.0f} MB{disk}"
            )
        growth = rss_growth([by[(stage, n)] for n in sizes if (stage, n) in by])
        grown = "" if growth is None else f"{growth:+,.2f} KB/img"
        lines.append(f"| {stage} | {kinds[kind]} | " + " | ".join(cells) + f" | {grown} |")
    return lines


def rss_growth(rows: list[dict]) -> float | None:
    """Peak RSS growth of one stage in KB per image of N between its two largest N (None
    with fewer than two sizes): about 0 where memory is flat in N. The two largest, not
    the extremes: bounded buffers (a shard being filled, the shards kept open) reach
    their size between the small N and the middle one, and are not growth with N."""
    if len(rows) < 2:
        return None
    small, large = sorted(rows, key=lambda r: r["n"])[-2:]
    return (large["peak_rss_mb"] - small["peak_rss_mb"]) * 1024 / (large["n"] - small["n"])


def _each(f) -> list[str]:
    """``f(n)`` for the image count of each dataset of :data:`DATASETS`."""
    return [f(n) for _, n in DATASETS]


def cost_rows(scale: dict, gpu: dict) -> list[tuple[str, list[str], str]]:
    """(what, one value per dataset of :data:`DATASETS`, how it was obtained)."""
    return _space_rows(scale) + _time_rows(scale, gpu)


def _space_rows(scale: dict) -> list[tuple[str, list[str], str]]:
    """Disk and memory rows."""
    seg = _stage(scale, "segmentation")
    pri = _stage(scale, "priors")
    load = _stage(scale, "loader")
    train = _stage(scale, "train")
    mask_per_image = seg["disk_bytes"] / max(seg["items"], 1)
    prior_per_image = pri["disk_bytes"] / max(pri["items"], 1)
    return [
        ("disk: images", ["as released"] * 2, "not measured here (the release's files)"),
        (
            "disk: masks (segmenter PNGs)",
            _each(lambda n: _gb(n * mask_per_image)),
            f"projection: N x {mask_per_image / 1e3:.1f} KB (measured per image)",
        ),
        (
            "disk: prior cache",
            _each(lambda n: _gb(n * prior_per_image)),
            f"projection: N x {prior_per_image / 1e3:.1f} KB (measured at N = {pri['n']:,})",
        ),
        (
            "disk: feature cache (when it pays)",
            _each(lambda n: _gb(n * FEATURE_BYTES)),
            "projection: N x 786 KB (1,024 x 384 float16; docs/decisions.md)",
        ),
        (
            "disk: checkpoints",
            [_gb(train["checkpoint_bytes"])] * 2,
            "measured: 3 x (weights + AdamW moments), counted from the parameters",
        ),
        (
            "RAM: training process (CPU, batch 2)",
            [f"{train['peak_rss_mb'] / 1024:,.1f} GiB"] * 2,
            f"measured peak RSS at N = {train['n']:,} (flat in N: see the stage table)",
        ),
        (
            "RAM: per loader worker",
            [f"{load['workers_peak_rss_mb'] / 1024:,.1f} GiB"] * 2,
            f"measured peak RSS of a worker at N = {load['n']:,}",
        ),
    ]


def _time_rows(scale: dict, gpu: dict) -> list[tuple[str, list[str], str]]:
    """Preprocessing and training-time rows."""
    seg = _stage(scale, "segmentation")
    pri = _stage(scale, "priors")
    load = _stage(scale, "loader")
    load_rate = 1000 / load["per_image_ms"] / CORES  # images/s per core
    seg_rate = 1000 / seg["per_image_ms"] / CORES
    prior_rate = 1000 / pri["per_image_ms"] / CORES
    gpu_rate = 32 / (gpu["train"]["32"]["soft_ms"] / 1000)
    return [
        (
            "preprocessing: images/s per core",
            [f"load {load_rate:,.0f}, segment {seg_rate:,.0f}, priors {prior_rate:,.0f}"] * 2,
            f"measured on {CORES} cores, divided by {CORES}",
        ),
        (
            "preprocessing: segmentation + priors, one core",
            _each(lambda n: _hours(n / seg_rate + n / prior_rate)),
            "projection: N / rate (images without masks; with CheXmask masks only priors)",
        ),
        (
            "time per epoch, 1 H100 (features cached)",
            _each(lambda n: _hours(n / gpu_rate)),
            f"projection: N / {gpu_rate:,.0f} images/s (soft, bf16, batch 32, measured "
            f"{gpu['date']} on {gpu['device']}; encoder not in the step)",
        ),
        (
            "time per epoch, 8 H100s (features cached)",
            _each(lambda n: _hours(n / (8 * gpu_rate))),
            "projection: N / (8 x the one-GPU rate): linear scaling assumed, not measured",
        ),
        (
            "cores to feed 8 H100s reading images",
            [f"{8 * gpu_rate / load_rate:,.0f}"] * 2,
            "projection: 8 x the GPU rate / images loaded per core per s",
        ),
    ]


def costs_section(scale: dict, gpu: dict, scale_name: str, gpu_name: str) -> str:
    """The generated section (module docstring)."""
    prov = scale.get("provenance", {})
    commit = str(prov.get("git_commit") or prov.get("commit") or "unknown")[:7]
    lines = [
        "<!-- generated by `cxr bench costs` from benchmark files: do not edit by hand -->",
        "",
        f"Per-stage cost on the MIMIC-CXR-JPG rehearsal layout (`{scale_name}`, commit "
        f"`{commit}`, {CORES}-core CPU; each stage in its own process: seconds, ms per "
        "image, peak RSS, disk written):",
        "",
        *stage_table(scale),
        "",
        f"**Costs of the full profile** (from `{scale_name}` and `{gpu_name}`"
        + (
            f"; the GPU figures are the last measured ({gpu['date']}): {gpu['transcribed']}"
            if gpu.get("transcribed")
            else ""
        )
        + "):",
        "",
        "| | " + " | ".join(f"{name} ({n:,} images)" for name, n in DATASETS) + " | how |",
        "| --- | " + " | ".join("---:" for _ in DATASETS) + " | --- |",
    ]
    for what, values, how in cost_rows(scale, gpu):
        lines.append(f"| {what} | " + " | ".join(values) + f" | {how} |")
    return "\n".join(lines) + "\n"


def update_costs(
    scale: str | os.PathLike,
    gpu: str | os.PathLike,
    readme: str | os.PathLike = "README.md",
    check: bool = False,
) -> bool:
    """Write (``check``: compare) the section; returns whether the README changed."""

    files = {}
    for path in (scale, gpu, readme):
        if not Path(path).is_file():
            raise CxrError(f"{path}: file does not exist")
    for path in (scale, gpu):
        try:
            files[path] = json.loads(Path(path).read_text())
        except ValueError as err:
            raise CxrError(f"{path}: not JSON ({err})") from None
    body = costs_section(files[scale], files[gpu], Path(scale).name, Path(gpu).name)
    text = Path(readme).read_text()
    new = replace_section(text, body, str(readme), (START, END))
    if new == text:
        return False
    if check:
        raise CxrError(
            f"{readme}: the costs section differs from {scale} (regenerate it: cxr bench "
            f"costs --scale {scale} --gpu {gpu} --readme {readme})"
        )
    write_atomic(Path(readme), lambda tmp: tmp.write_text(new))
    return True
