"""``cxr bench features``: a training epoch with the encoder feature cache against
recomputing the frozen encoder, interleaved in the same run, and what each is made of."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from cxrlib.base.images import load_pixels
from cxrlib.base.provenance import provenance
from cxrlib.data.manifest import read_manifest
from cxrlib.data.phantom import write_phantom
from cxrlib.experiment.bench.harness import cpu_name, interleaved_runs, torch_threads
from cxrlib.model import ModelConfig, ReportModel
from cxrlib.training.features import FeatureCache

FEATURES_TARGET_SPEEDUP = 3.0


def bench_features(
    n: int = 128,
    batch: int = 16,
    size: int = 224,
    threads: int = 0,
    repeats: int = 3,
    seed: int = 0,
) -> dict:
    """Training epoch with the encoder feature cache against recomputing the encoder.

    In one run, at the tiny preset (``ModelConfig.tiny(mode="soft")``, frozen encoder,
    random weights, float32) on the CPU with ``threads`` torch threads (0: torch's
    default; restored afterwards): write an ``n``-image phantom at ``size`` px (resized
    to the model's 224 px on load), build the :class:`~cxrlib.training.features.FeatureCache`
    (timed: the one-time cost), then run ``repeats`` epochs each way, interleaved, and
    keep the fastest of each. An epoch is, per batch of ``batch`` images: the image
    features, then the trainer's step (forward with labels and priors of ones, backward,
    AdamW step, zero_grad).

    - uncached: :func:`~cxrlib.base.images.load_pixels` of every image, then the
      encoder under ``no_grad``;
    - cached: :meth:`FeatureCache.load` of the batch's ids.

    Ratio: uncached / cached epoch seconds, against the 3x target. The uncached epoch is
    split into image loading, encoder and decoder step (bridge + decoder forward,
    backward and optimiser step), so what dominates is measured, not guessed.
    """
    with torch_threads(threads):
        for name, value in (("n", n), ("batch", batch), ("size", size), ("repeats", repeats)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        with tempfile.TemporaryDirectory() as tmp:
            return _bench_features(Path(tmp), n, batch, size, repeats, seed)


def _bench_features(tmp: Path, n: int, batch: int, size: int, repeats: int, seed: int) -> dict:
    model, cache, report, ids, paths, texts = _features_setup(tmp, n, batch, size, seed)
    epochs = _FeatureEpochs(model, cache, _feature_batches(model, ids, paths, texts, batch))
    max_diff = epochs.warm_up()
    runs = interleaved_runs({"uncached": epochs.uncached, "cached": epochs.cached}, repeats)
    return {
        **_features_settings(n, size, batch, repeats, model, epochs.batches),
        **_features_times(report, cache, runs["uncached"], runs["cached"]),
        "max_abs_diff_cached_vs_encoder": max_diff,
        "provenance": provenance(),
    }


def _features_setup(tmp: Path, n: int, batch: int, size: int, seed: int) -> tuple:
    """An ``n``-image phantom under ``tmp``, the tiny soft model and its built feature
    cache: (model, cache, build report, image ids, image paths, Findings)."""
    write_phantom(tmp / "phantom", n=n, seed=seed, size=size, workers=1, progress=False)
    manifest = read_manifest(tmp / "phantom" / "manifest.csv")
    df = manifest.frame
    ids = [str(v) for v in df["image_id"]]
    paths = [str(manifest.resolve(p)) for p in df["image_path"]]
    texts = [str(t) for t in df["findings"]]
    torch.manual_seed(seed)
    model = ReportModel.from_config(ModelConfig.tiny(mode="soft"), texts=texts)
    cache = FeatureCache(tmp / "features", model)
    report = cache.build(ids, paths, batch_size=batch, progress=False)
    if report.bad or report.computed != n:
        raise RuntimeError(f"feature cache build failed: {report.describe()}")
    return model, cache, report, ids, paths, texts


def _feature_batches(model, ids: list, paths: list, texts: list, batch: int) -> list:
    """The epoch's batches: (ids, paths, tokens, priors of ones (B, L, P))."""
    batches = []
    for start in range(0, len(ids), batch):
        rows = slice(start, start + batch)
        tokens = model.tokenizer.batch(texts[rows], model.config.max_text_tokens)
        priors = torch.ones(len(ids[rows]), model.num_decoder_layers, model.num_patches)
        batches.append((ids[rows], paths[rows], tokens, priors))
    return batches


class _FeatureEpochs:
    """A training epoch over fixed batches, the image features computed by the encoder
    (uncached) or loaded from the feature cache (cached); each returns its split, s."""

    def __init__(self, model, cache: FeatureCache, batches: list):
        self.model, self.cache, self.batches = model, cache, batches
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4)
        model.train()

    def step(self, features, tokens, priors) -> None:
        out = self.model(image_features=features, priors=priors, **tokens)
        out.loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def encode(self, paths_b) -> tuple:
        """(features (B, P, E), seconds loading the images, seconds in the encoder)."""
        t0 = time.perf_counter()
        size = self.model.config.image_size
        pixels = torch.stack([load_pixels(p, size) for p in paths_b])  # (B, 3, S, S)
        t1 = time.perf_counter()
        with torch.no_grad():
            features = self.model.encode_images(pixels)  # (B, P, E)
        return features, t1 - t0, time.perf_counter() - t1

    def uncached(self) -> dict[str, float]:
        split = {"image_loading": 0.0, "encoder": 0.0, "decoder_step": 0.0}
        for _, paths_b, tokens, priors in self.batches:
            features, load_s, enc_s = self.encode(paths_b)
            t0 = time.perf_counter()
            self.step(features, tokens, priors)
            split["image_loading"] += load_s
            split["encoder"] += enc_s
            split["decoder_step"] += time.perf_counter() - t0
        return split

    def cached(self) -> dict[str, float]:
        split = {"cache_load": 0.0, "decoder_step": 0.0}
        for ids_b, _, tokens, priors in self.batches:
            t0 = time.perf_counter()
            features = self.cache.load(ids_b)  # (B, P, E) float16
            t1 = time.perf_counter()
            self.step(features, tokens, priors)
            split["cache_load"] += t1 - t0
            split["decoder_step"] += time.perf_counter() - t1
        return split

    def warm_up(self) -> float:
        """A step each way on the first batch; the max abs difference of the cached
        features and the encoder's (float16 rounding only)."""
        ids0, paths0, tokens0, priors0 = self.batches[0]
        fresh, _, _ = self.encode(paths0)
        max_diff = float((self.cache.load(ids0).float() - fresh).abs().max())
        self.step(fresh, tokens0, priors0)
        self.step(self.cache.load(ids0), tokens0, priors0)
        return max_diff


def _features_settings(n: int, size: int, batch: int, repeats: int, model, batches) -> dict:
    """What the feature-cache benchmark ran: sizes, model, threads, machine."""
    mean_tokens = sum(int(t["attention_mask"].sum()) for _, _, t, _ in batches) / n
    return {
        "benchmark": "features",
        "n": n,
        "size": size,
        "batch": batch,
        "batches_per_epoch": len(batches),
        "repeats": repeats,
        "preset": "tiny",
        "image_size": model.config.image_size,
        "num_patches": model.num_patches,
        "encoder_width": model.encoder_width,
        "decoder_layers": model.num_decoder_layers,
        "mean_text_tokens": round(mean_tokens, 1),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_name(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _features_times(report, cache: FeatureCache, uncached_runs: list, cached_runs: list) -> dict:
    """The build, the fastest epoch each way and its split, every epoch, the ratios."""
    uncached_s, uncached_split = min(uncached_runs, key=lambda run: run[0])
    cached_s, cached_split = min(cached_runs, key=lambda run: run[0])
    ratio = uncached_s / cached_s
    r3 = lambda d: {k: round(v, 3) for k, v in d.items()}  # noqa: E731
    return {
        "build_s": round(report.seconds, 3),
        "cache_bytes": sum(p.stat().st_size for p in cache.folder.iterdir()),
        "epoch_s": {"uncached": round(uncached_s, 3), "cached": round(cached_s, 3)},
        "uncached_split_s": r3(uncached_split),
        "uncached_share": {k: round(v / uncached_s, 3) for k, v in uncached_split.items()},
        "cached_split_s": r3(cached_split),
        "all_epochs_s": {
            "uncached": [round(t, 3) for t, _ in uncached_runs],
            "cached": [round(t, 3) for t, _ in cached_runs],
        },
        "ratios": {
            "uncached_vs_cached": round(ratio, 3),
            "vs_target_3x": round(ratio / FEATURES_TARGET_SPEEDUP, 3),
            "bound_if_cache_load_free": round(uncached_s / uncached_split["decoder_step"], 3),
            "build_vs_uncached_epoch": round(report.seconds / uncached_s, 3),
        },
        "target": FEATURES_TARGET_SPEEDUP,
        "meets_target": ratio >= FEATURES_TARGET_SPEEDUP,
    }


def format_features_table(result: dict) -> str:
    """The feature-cache benchmark as an aligned table."""
    e, u, c, r = (
        result["epoch_s"],
        result["uncached_split_s"],
        result["cached_split_s"],
        result["ratios"],
    )
    share = result["uncached_share"]
    rows = [
        ("epoch s, uncached (load + encoder + step)", e["uncached"]),
        (f"  image loading ({share['image_loading']:.0%})", u["image_loading"]),
        (f"  encoder ({share['encoder']:.0%})", u["encoder"]),
        (f"  decoder step ({share['decoder_step']:.0%})", u["decoder_step"]),
        ("epoch s, cached (cache load + step)", e["cached"]),
        ("  cache load", c["cache_load"]),
        ("  decoder step", c["decoder_step"]),
        ("one-time cache build s", result["build_s"]),
        ("uncached / cached", r["uncached_vs_cached"]),
        (f"  vs the {result['target']:g}x target", r["vs_target_3x"]),
        ("  bound if the cache load were free", r["bound_if_cache_load_free"]),
    ]
    width = max(len(k) for k, _ in rows)
    head = (
        f"features benchmark: n={result['n']}, size={result['size']} px -> "
        f"{result['image_size']} px, batch={result['batch']}, preset={result['preset']} "
        f"(P={result['num_patches']}, ~{result['mean_text_tokens']} text tokens), "
        f"threads={result['torch_threads']}, best of {result['repeats']}"
    )
    lines = [head] + [f"  {k:<{width}}  {v}" for k, v in rows]
    lines.append(f"  meets target: {'yes' if result['meets_target'] else 'no'}")
    return "\n".join(lines)
