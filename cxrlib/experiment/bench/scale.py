"""``cxr bench scale``: the full profile's data path on the rehearsal layout at N images.

For each N, every stage runs in a process of its own (so its peak RSS is its own:
``ru_maxrss``, with the RSS after imports given apart), in the order a MIMIC-CXR run
takes them, on a MIMIC-CXR-JPG rehearsal tree (:mod:`cxrlib.data.phantom.layouts`,
images 512 px, hard links to a pool of 512 renders):

==============  ==================================================================  =======
stage           what runs                                                           images
==============  ==================================================================  =======
layout          ``write_layout`` (the rehearsal data itself; not a stage of a run)  all
adapter         ``cxr manifest mimic-cxr`` (:func:`cxrlib.data.mimic.build_manifest`) all
masks           joining a mask file per image (as CheXmask's would be) to the rows all
validation      :func:`read_manifest` with every file checked                       all
split           :func:`cxrlib.training.inputs.load_splits` (train and validate rows)  all
segmentation    the segmenter (256 px U-Net, random weights) on images without masks sample
priors          the run's layer priors through the prior cache, published settings  all
loader          ``split_dataset`` (header check, priors) + DataLoader at 512 px     sample
tokenisation    BPE on the train Findings (8,192 tokens) and encoding all texts     all
train           published sizes, random weights, CPU: a few steps, encoder in them  few
generation      the same model, greedy, KV cache                                    few
evaluation      labeler, lexical metrics, 1,000-resample intervals on the test split all
figures         label prevalence and split/view counts, drawn and saved             all
==============  ==================================================================  =======

Stages marked *sample* process at most ``sample`` images of the N rows (per image cost
is what matters: their time for all N is projected as N x seconds per image and says
so); *few* stages (training, generation) do not depend on N. Disk is what the stage's
outputs take (hard links counted once).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from cxrlib.anatomy.segmenter import Segmenter, SegmenterConfig
from cxrlib.base.provenance import provenance
from cxrlib.data import explore, mimic
from cxrlib.data.dataset import Collate
from cxrlib.data.manifest import read_manifest, write_manifest
from cxrlib.data.phantom.layouts import write_layout
from cxrlib.evaluate.evaluate import evaluate_generations
from cxrlib.experiment import figures
from cxrlib.experiment.bench.costs import stage_table
from cxrlib.model import ModelConfig, ReportModel, ReportTokenizer
from cxrlib.training.config import load_config
from cxrlib.training.inputs import (
    checkpoint_bytes,
    epoch_loader,
    load_splits,
    manifest_priors,
    split_dataset,
)

STAGES = (
    "layout",
    "adapter",
    "masks",
    "validation",
    "split",
    "segmentation",
    "priors",
    "loader",
    "tokenisation",
    "train",
    "generation",
    "evaluation",
    "figures",
)
SAMPLED = {"segmentation": "sample", "loader": "sample", "train": "few", "generation": "few"}
"""Stages that do not process every image (module docstring)."""

IMAGE_SIZE = 512
TRAIN_STEPS = 2
TRAIN_BATCH = 2
NEW_TOKENS = 32


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def disk_bytes(*paths: Path) -> int:
    """Bytes on disk under ``paths`` (allocated blocks; a hard-linked file counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in paths:
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = (Path(d) / f for d, _, names in os.walk(path) for f in names)
        else:
            continue
        for file in files:
            st = os.lstat(file)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


# --- the stages (each runs in its own process) ---------------------------------------------


def _config(work: Path, manifest: Path):

    config = load_config("full", overrides=[{"data": {"manifest": str(manifest)}}])
    config.data.cache_dir = str(work / "cache")
    config.model = ModelConfig.published(pretrained=False, mode="soft")
    return config


def _model(config, texts):

    torch_seed()
    tokenizer = ReportTokenizer.train(texts, config.model.tokenizer_vocab_size)
    return ReportModel.from_config(config.model, tokenizer=tokenizer)


def torch_seed() -> None:
    import torch

    torch.manual_seed(0)


def stage_layout(work: Path, n: int, sample: int) -> dict:

    write_layout(work / "mimic", "mimic-cxr-jpg", n, size=IMAGE_SIZE)
    return {"items": n, "outputs": [work / "mimic"]}


def stage_adapter(work: Path, n: int, sample: int) -> dict:

    mimic.build_manifest(work / "mimic", work / "manifest.csv", allow_in_repo=True)
    return {"items": n, "outputs": [work / "manifest.csv"]}


def stage_masks(work: Path, n: int, sample: int) -> dict:
    """Every image gets its pool image's mask files (what ``cxr masks chexmask`` gives a
    MIMIC-CXR manifest), except the first ``sample`` train rows, left to the segmenter."""
    import pandas as pd

    pool = work / "mimic" / "phantom-pool"
    with gzip.open(pool / "links.csv.gz", "rt", newline="") as f:
        links = {row[0]: row[1] for row in csv.reader(f)}
    (pool_manifest,) = pool.glob("phantom-*/manifest.csv")
    pool_rows = read_manifest(pool_manifest, check_files=False)
    masks = {}
    for row in pool_rows.frame.itertuples(index=False):
        masks[row.image_id] = {
            c: str(pool_rows.resolve(getattr(row, c)))
            for c in ("lung_mask_path", "heart_mask_path")
        }
    manifest = read_manifest(work / "manifest.csv", check_files=False)
    df = manifest.frame
    root = work / "mimic"
    pool_ids = [
        links[str(Path(p).relative_to(root))] for p in df["image_path"].map(manifest.resolve)
    ]
    for column in ("lung_mask_path", "heart_mask_path"):
        df[column] = [masks[i][column] for i in pool_ids]
    unmasked = df.index[df["split"] == "train"][:sample]
    df.loc[unmasked, ["lung_mask_path", "heart_mask_path"]] = ""
    df["image_path"] = df["image_path"].map(lambda p: str(manifest.resolve(p)))
    write_manifest(pd.DataFrame(df), work / "manifest-masks.csv", check_files=False)
    return {"items": n, "outputs": [work / "manifest-masks.csv"]}


def stage_validation(work: Path, n: int, sample: int) -> dict:

    read_manifest(work / "manifest-masks.csv", check_files=True)
    return {"items": n}


def stage_split(work: Path, n: int, sample: int) -> dict:

    manifest = work / "manifest-masks.csv"
    splits = load_splits(_config(work, manifest), manifest)
    return {"items": n, "rows": {k: len(v) for k, v in splits.items()}}


def stage_segmentation(work: Path, n: int, sample: int) -> dict:
    import numpy as np
    from PIL import Image

    torch_seed()
    manifest = read_manifest(work / "manifest-masks.csv", check_files=False)
    df = manifest.frame
    rows = df[df["lung_mask_path"].fillna("") == ""]
    seg = Segmenter(SegmenterConfig(image_size=256))
    out = work / "segmented"
    out.mkdir(exist_ok=True)
    paths = list(rows["image_path"])
    batch, start_loop = 8, time.perf_counter()
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        images = [np.asarray(Image.open(p).convert("L").resize((256, 256))) for p in chunk]
        masks = seg.predict(np.stack(images))
        for k, path in enumerate(chunk):
            for organ, mask in masks.items():
                name = f"{Path(path).stem}_{organ}.png"
                Image.fromarray(mask[k].astype(np.uint8) * 255).save(out / name)
    return {"items": len(paths), "outputs": [out], "work_seconds": time.perf_counter() - start_loop}


def _train_rows(work: Path):

    manifest = work / "manifest-masks.csv"
    config = _config(work, manifest)
    rows = load_splits(config, manifest)["train"]
    return config, rows.subset(rows.frame[rows.frame["lung_mask_path"].fillna("") != ""])


def stage_priors(work: Path, n: int, sample: int) -> dict:

    config, rows = _train_rows(work)
    # the settings and mask source a run uses (prior_settings of the published model:
    # GPT-2 small's 12 layers), so that the loader and training stages find them cached
    settings = config.priors.resolve(config.model.image_size, config.model.patch_size, 12)
    priors = manifest_priors(config, settings, rows)
    folders = sorted((work / "cache" / "priors").glob("priors-*"))
    return {"items": len(rows), "rows": len(priors), "outputs": folders}


def stage_loader(work: Path, n: int, sample: int) -> dict:
    import torch

    config, rows = _train_rows(work)
    model = _model(config, list(rows.frame["findings"].iloc[:2000]))
    dataset, _ = split_dataset(config, model, rows, progress=False, use_cache=False)
    batches = [list(range(i, min(i + 16, sample))) for i in range(0, min(sample, len(dataset)), 16)]
    loader = epoch_loader(dataset, batches, Collate(model.tokenizer, 128), num_workers=2, seed=0)
    seen, start = 0, time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            seen += batch["pixel_values"].shape[0]
    return {
        "items": seen,
        "dataset_rows": len(dataset),
        "work_seconds": time.perf_counter() - start,
    }


def stage_tokenisation(work: Path, n: int, sample: int) -> dict:

    _, rows = _train_rows(work)
    texts = [str(t) for t in rows.frame["findings"]]
    tokenizer = ReportTokenizer.train(texts, 8192)
    tokens = sum(len(tokenizer.encode(t)) for t in texts)
    return {"items": len(texts), "tokens": tokens}


def stage_train(work: Path, n: int, sample: int) -> dict:
    import torch

    config, rows = _train_rows(work)
    model = _model(config, list(rows.frame["findings"].iloc[:2000]))
    dataset, _ = split_dataset(config, model, rows, progress=False, use_cache=False)
    batches = [list(range(i * TRAIN_BATCH, (i + 1) * TRAIN_BATCH)) for i in range(TRAIN_STEPS + 1)]
    loader = epoch_loader(dataset, batches, Collate(model.tokenizer, 128), num_workers=0, seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-5)
    model.train()
    step_seconds = []
    for batch in loader:  # the loader's time is not the step's
        start = time.perf_counter()
        out = model(
            pixel_values=batch["pixel_values"],
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            priors=batch["priors"],
            labels=batch["labels"],
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step_seconds.append(time.perf_counter() - start)
    # the first step warms up (allocations); the rest are the step's cost
    steps = step_seconds[1:]
    return {
        "checkpoint_bytes": checkpoint_bytes(model),
        "items": TRAIN_BATCH * len(steps),
        "step_seconds": steps,
        "batch": TRAIN_BATCH,
        "work_seconds": sum(steps),
    }


def stage_generation(work: Path, n: int, sample: int) -> dict:
    import torch

    config, rows = _train_rows(work)
    model = _model(config, list(rows.frame["findings"].iloc[:2000]))
    dataset, _ = split_dataset(config, model, rows, progress=False, use_cache=False)
    loader = epoch_loader(dataset, [[0, 1]], Collate(model.tokenizer, 128), num_workers=0, seed=0)
    model.eval()
    batch = next(iter(loader))
    start = time.perf_counter()
    with torch.no_grad():
        texts = model.generate(
            pixel_values=batch["pixel_values"], priors=batch["priors"], max_new_tokens=NEW_TOKENS
        )
    return {
        "items": len(texts),
        "work_seconds": time.perf_counter() - start,
        "new_tokens": NEW_TOKENS,
    }


def stage_evaluation(work: Path, n: int, sample: int) -> dict:
    import pandas as pd

    ref = read_manifest(work / "manifest-masks.csv", check_files=False)
    test = ref.frame[ref.frame["split"] == "test"]
    # a deterministic "system": each test image gets the next image's Findings
    generated = list(test["findings"].iloc[1:]) + list(test["findings"].iloc[:1])
    pred = pd.DataFrame({"image_id": test["image_id"], "generated": generated})
    evaluate_generations(
        pred, ref, meteor=False, progress=False, out=work / "evaluation", attention_studies=0
    )
    return {"items": len(test), "outputs": [work / "evaluation"]}


def stage_figures(work: Path, n: int, sample: int) -> dict:
    import matplotlib

    matplotlib.use("Agg")

    df = read_manifest(work / "manifest-masks.csv", check_files=False).frame
    out = work / "figures"
    figures.save_figure(figures.plot_label_prevalence(explore.label_prevalence(df)), out, "prev")
    figures.save_figure(figures.plot_split_view_counts(explore.split_view_counts(df)), out, "views")
    return {"items": len(df), "outputs": [out]}


def run_stage(stage: str, work: Path, n: int, sample: int) -> dict:
    """Run one stage here and return its measurements (the child process's side)."""
    start_rss = _rss_mb()
    start = time.perf_counter()
    result = globals()[f"stage_{stage}"](work, n, sample)
    seconds = time.perf_counter() - start
    outputs = result.pop("outputs", [])
    return {
        "stage": stage,
        "n": n,
        "seconds": seconds,
        "start_rss_mb": start_rss,
        "peak_rss_mb": _peak_mb(),
        "workers_peak_rss_mb": _children_peak_mb(),
        "disk_bytes": disk_bytes(*outputs),
        **result,
    }


# --- the driver ----------------------------------------------------------------------------


def bench_scale(
    sizes: tuple[int, ...] = (2000, 20000, 100000),
    work: str | os.PathLike = "/tmp/cxr-scale",
    sample: int = 512,
    stages: tuple[str, ...] = STAGES,
    keep: bool = False,
) -> dict:
    """Every stage at every size (module docstring); each stage in its own process."""
    import shutil

    started = provenance()  # the code the stages run: the commit when the run starts
    rows = []
    for n in sizes:
        folder = Path(work) / f"n{n}"
        if not keep and "layout" in stages:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        for stage in stages:
            cmd = [sys.executable, "-m", __name__, stage, str(folder), str(n), str(sample)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"stage {stage} at n={n} failed:\n{done.stderr[-3000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            # sampled stages: per image from their loop alone (setup, e.g. building the
            # model, excluded); the rest: the whole stage
            work_seconds = row.get("work_seconds", row["seconds"])
            row["per_image_ms"] = 1000 * work_seconds / max(row["items"], 1)
            row["kind"] = SAMPLED.get(stage, "all")
            rows.append(row)
            print(format_row(row), flush=True)
    return {
        "benchmark": "scale",
        "sample": sample,
        "sizes": list(sizes),
        "stages": rows,
        "provenance": started,
    }


def format_row(row: dict) -> str:
    return (
        f"n={row['n']:>7} {row['stage']:<13} {row['items']:>7} images {row['seconds']:8.1f} s "
        f"{row['per_image_ms']:8.2f} ms/image  peak {row['peak_rss_mb']:7.0f} MB "
        f"(start {row['start_rss_mb']:5.0f}, workers {row['workers_peak_rss_mb']:5.0f})  "
        f"disk {row['disk_bytes'] / 2**20:8.1f} MB"
    )


def format_scale_table(result: dict) -> str:
    """Markdown: one row per stage, time / ms per image / peak RSS / disk per size and
    the RSS growth (the README's table: :func:`cxrlib.experiment.bench.costs.stage_table`)."""
    return "\n".join(stage_table(result))


if __name__ == "__main__":  # one stage, in its own process (bench_scale's child)
    import logging

    logging.basicConfig(level=logging.WARNING)
    stage, folder, n, sample = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(run_stage(stage, folder, n, sample)))
