"""Benchmarks behind ``cxr bench``: each prints a table and JSON, and every speed is
also given as a ratio against a baseline measured in the same run (no timing asserts
live in the tests; speed claims live here and in ``benchmarks/README.md``)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from cxrlib.anatomy.priors import (
    PriorConfig,
    downsample_to_grid,
    gaussian_kernel1d,
    layer_priors,
    masks_to_priors,
    schedule,
)
from cxrlib.anatomy.priors import schedule as layer_schedule
from cxrlib.base.images import load_pixels
from cxrlib.base.provenance import provenance
from cxrlib.base.vocabulary import MODES
from cxrlib.data.iu_xray import iter_reports
from cxrlib.data.manifest import read_manifest
from cxrlib.data.phantom import make_study_row, phantom_study, write_phantom
from cxrlib.data.phantom.text import findings_text
from cxrlib.evaluate.iu_validation import SHARED_REPORTS, report_text
from cxrlib.metrics import labeler as lab
from cxrlib.model import ModelConfig, ReportModel, attention
from cxrlib.training.features import FeatureCache

PHANTOM_TARGET_IMAGES_PER_S = 50.0


def bench_phantom(n: int = 200, size: int = 256, seed: int = 0) -> dict:
    """Phantom generation speed on one core, and what it is made of.

    Measures, in one run: drawing only (sample + render + text, no files), the full
    single-process writer (``write_phantom(workers=1)``: PNGs and manifest included),
    and the writer with two processes. Ratios: full vs the 50 images/s target, full vs
    drawing only (the cost of encoding and writing), two processes vs one.
    """
    make_study_row(0, seed, size, None)  # warm-up: imports, caches
    t0 = time.perf_counter()
    for i in range(n):
        make_study_row(i, seed, size, None)
    draw_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        one = write_phantom(Path(tmp) / "w1", n=n, seed=seed, size=size, workers=1, progress=False)
        two = write_phantom(Path(tmp) / "w2", n=n, seed=seed, size=size, workers=2, progress=False)
    rate_draw = n / draw_s
    rate_one = n / one.seconds
    rate_two = n / two.seconds
    return {
        "benchmark": "phantom",
        "n": n,
        "size": size,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "images_per_s": {
            "draw_only_1_process": round(rate_draw, 1),
            "write_1_process": round(rate_one, 1),
            "write_2_processes": round(rate_two, 1),
        },
        "ratios": {
            "write_1_process_vs_target_50": round(rate_one / PHANTOM_TARGET_IMAGES_PER_S, 2),
            "write_vs_draw_only": round(rate_one / rate_draw, 2),
            "2_processes_vs_1": round(rate_two / rate_one, 2),
        },
        "provenance": provenance(),
    }


PRIORS_TARGET_MASKS_PER_S = 2000.0


def _naive_layer_priors(grid_masks, config):
    """Baseline: one image and one layer at a time: F.pad(reflect), two 1-D convs, min-max."""
    import torch
    import torch.nn.functional as F

    kernels = []
    for k, sigma in schedule(config):
        w = torch.from_numpy(gaussian_kernel1d(k, sigma)).to(torch.float32)
        kernels.append(((k - 1) // 2, w.view(1, 1, k, 1), w.view(1, 1, 1, k)))
    out = torch.empty(grid_masks.shape[0], config.num_layers, config.num_patches)
    for b in range(grid_masks.shape[0]):
        x = grid_masks[b][None, None]
        for layer, (pad, w_rows, w_cols) in enumerate(kernels):
            y = F.conv2d(F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), w_rows), w_cols)
            y = y.flatten()
            lo, hi = y.min(), y.max()
            out[b, layer] = (y - lo) / (hi - lo) if hi - lo > 1e-6 else torch.ones_like(y)
    return out


def _best_rate(fn, n: int, repeats: int):
    """(items/s of the fastest of ``repeats`` calls, the last call's result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return n / best, result


def _no_sync() -> None:
    pass


def _interleaved_runs(fns: dict, repeats: int, warmup: int = 0, sync=_no_sync) -> dict:
    """Time each of ``fns`` (name: no-argument callable) ``warmup + repeats`` times, all
    in the same run and interleaved, the order rotated by one every round (baseline and
    candidates meet the same machine load); ``sync`` (e.g. a CUDA synchronise) before
    and inside each timing. Returns, per name, the ``(seconds, result)`` of each timed
    call after the warm-up rounds."""
    names = list(fns)
    runs: dict[str, list] = {name: [] for name in names}
    for r in range(warmup + repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            sync()
            t0 = time.perf_counter()
            result = fns[name]()
            sync()
            if r >= warmup:
                runs[name].append((time.perf_counter() - t0, result))
    return runs


def bench_priors(
    n: int = 4096,
    grid: int = 32,
    layers: int = 12,
    schedule: str = "thesis",
    n_naive: int = 200,
    n_full: int = 128,
    repeats: int = 3,
    seed: int = 0,
    threads: int = 0,
) -> dict:
    """Layer-prior throughput: masks/s, one "mask" = one image's whole L-layer stack.

    Measures, in one run, on ``threads`` torch threads (0: torch's default; restored
    afterwards), best of ``repeats``:
    :func:`~cxrlib.anatomy.priors.layer_priors` on ``n`` grid masks (the vectorised
    path); the naive baseline (per image, per layer: ``F.pad(reflect)``, a row and a
    column ``conv2d``, min-max) on ``n_naive``, always on one thread; and the whole pipeline from
    three ``16 * grid`` px bool masks per image (combine, exact area downsample,
    priors) on ``n_full``. Ratios: vectorised vs naive and vs the 2,000 masks/s target;
    the max abs difference vectorised vs naive checks they compute the same thing.
    """
    import torch

    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bench_priors(n, grid, layers, schedule, n_naive, n_full, repeats, seed)
    finally:
        torch.set_num_threads(before)


def _bench_priors(
    n: int,
    grid: int,
    layers: int,
    schedule: str,
    n_naive: int,
    n_full: int,
    repeats: int,
    seed: int,
) -> dict:
    import torch

    config = PriorConfig(schedule=schedule, num_layers=layers, image_size=16 * grid)
    if schedule == "none":
        raise ValueError("schedule 'none' does no smoothing: nothing to benchmark")
    if max(k for k, _ in layer_schedule(config)) // 2 >= grid:
        raise ValueError(f"grid {grid} is too small for the reflect-padded naive baseline")
    gen = torch.Generator().manual_seed(seed)
    side = 16 * grid
    yy, xx = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")

    def ellipses(count: int, cx: float, cy: float) -> torch.Tensor:  # bool (count, side, side)
        c = torch.rand(count, 4, generator=gen)
        x0 = (cx + 0.08 * (c[:, 0] - 0.5))[:, None, None]
        y0 = (cy + 0.08 * (c[:, 1] - 0.5))[:, None, None]
        rx = (0.12 + 0.06 * c[:, 2])[:, None, None]
        ry = (0.25 + 0.08 * c[:, 3])[:, None, None]
        return ((xx - x0) / rx) ** 2 + ((yy - y0) / ry) ** 2 < 1

    masks = {
        "right_lung": ellipses(n_full, 0.32, 0.45),
        "left_lung": ellipses(n_full, 0.68, 0.45),
        "heart": ellipses(n_full, 0.55, 0.62) & (yy > 0.5),
    }
    union = masks["left_lung"] | masks["right_lung"] | masks["heart"]
    base = downsample_to_grid(union, grid)  # (n_full, g, g)
    grid_masks = base.repeat((n + n_full - 1) // n_full, 1, 1)[:n].contiguous()

    layer_priors(grid_masks[:64], config)  # warm-up
    rate_vec, _ = _best_rate(lambda: layer_priors(grid_masks, config), n, repeats)
    k_naive = min(n_naive, n)
    # the naive loop runs on one thread: its tiny ops gain nothing from more, and on a
    # busy machine a thread pool makes them collapse (measured: 5 masks/s on 2 threads)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rate_naive, naive = _best_rate(
            lambda: _naive_layer_priors(grid_masks[:k_naive], config), k_naive, 1
        )
    finally:
        torch.set_num_threads(threads)
    rate_full, _ = _best_rate(lambda: masks_to_priors(masks, config), n_full, repeats)
    diff = float((layer_priors(grid_masks[:k_naive], config) - naive).abs().max())
    return {
        "benchmark": "priors",
        "n": n,
        "size": grid,
        "grid": grid,
        "layers": layers,
        "schedule": schedule,
        "n_naive": k_naive,
        "n_full": n_full,
        "full_mask_px": side,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "images_per_s": {
            "vectorised_layer_priors": round(rate_vec, 1),
            "naive_per_image_per_layer": round(rate_naive, 1),
            f"full_pipeline_from_{side}px_masks": round(rate_full, 1),
        },
        "ratios": {
            "vectorised_vs_naive": round(rate_vec / rate_naive, 2),
            "vectorised_vs_target_2000": round(rate_vec / PRIORS_TARGET_MASKS_PER_S, 2),
            "full_pipeline_vs_target_2000": round(rate_full / PRIORS_TARGET_MASKS_PER_S, 2),
        },
        "max_abs_diff_vs_naive": diff,
        "provenance": provenance(),
    }


def format_table(result: dict) -> str:
    """The result as an aligned two-column text table."""
    if result["benchmark"] == "model":
        return format_model_table(result)
    rows = [(k, v) for k, v in result["images_per_s"].items()]
    rows += [(k, v) for k, v in result["ratios"].items()]
    width = max(len(k) for k, _ in rows)
    head = f"{result['benchmark']} benchmark: n={result['n']}, size={result['size']}"
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])


def run(name: str, out: str | os.PathLike | None = None, **kwargs) -> dict:
    """Run benchmark ``name``, print its table and JSON, write JSON to ``out`` if given."""
    benches = {
        "phantom": (bench_phantom, format_table),
        "priors": (bench_priors, format_table),
        "model": (bench_model, format_table),
        "features": (bench_features, format_features_table),
        "labeler": (bench_labeler, format_labeler_table),
    }
    if name not in benches:
        raise ValueError(f"unknown benchmark {name!r} (choose from {', '.join(benches)})")
    bench, table = benches[name]
    result = bench(**kwargs)
    print(table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return result


# --- cxr bench model -------------------------------------------------------------------

MODEL_TARGETS = {"train_step_vs_none": 1.10, "decode_vs_none": 1.15}
MODEL_PRESET_SIZES = {  # preset: (batch, text tokens, new tokens, repeats)
    "tiny": (4, 64, 32, 15),
    "published": (8, 128, 64, 10),
}


def bench_model(
    device: str = "cpu",
    preset: str = "tiny",
    dtype: str = "float32",
    batch: int = 0,
    text_tokens: int = 0,
    new_tokens: int = 0,
    repeats: int = 0,
    threads: int = 0,
    seed: int = 0,
    bias_kernel: str = "auto",
) -> dict:
    """Cost of the anatomical attention: soft and strict against none, same run, same sizes.

    Three models with identical weights (one per mode; the ``published`` preset from
    configs, random weights, no download) on ``device``. Measured, interleaving the
    modes and taking the median (training) or the best (decoding, launch-bound on GPUs)
    of ``repeats`` after warm-up:

    - training step: forward + backward of the bridge and decoder on one fixed batch of
      ``batch`` images (cached encoder features: the encoder is the same in every mode
      and would only dilute the ratio) and ``text_tokens`` text tokens;
    - decoding with the KV cache, ms per token: ``(t(new_tokens) - t(1)) / (new_tokens - 1)``
      for greedy ``generate_ids`` without EOS stopping, so the prefill is excluded;
    - the same without the cache (full recomputation every step), and the speed-up.

    Also the memory of the prior as kept, a (L, B, 1, 1, P) bias, against
    materialised per-layer (T x T) masks at the published sizes (computed, not
    allocated), and on CUDA the peak memory of each training step. ``dtype``
    ``bfloat16`` runs under autocast. 0 for ``batch`` ... ``repeats`` takes the
    preset's value; ``threads`` 0 keeps torch's CPU thread count. ``bias_kernel``
    chooses how soft and strict add the bias in the causal training pass
    (:data:`cxrlib.model.attention.BIAS_KERNELS`; ``auto``: the device's default).
    """
    import torch

    if preset not in MODEL_PRESET_SIZES:
        raise ValueError(f"preset: expected tiny or published (got {preset!r})")
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype: expected float32 or bfloat16 (got {dtype!r})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA device is available")
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    defaults = MODEL_PRESET_SIZES[preset]
    given = (batch, text_tokens, new_tokens, repeats)
    sizes = [v or d for v, d in zip(given, defaults, strict=True)]
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    kernel_before = attention.set_bias_kernel(bias_kernel)
    try:
        result = _bench_model(torch.device(device), preset, dtype, *sizes, seed)
    finally:
        torch.set_num_threads(before)
        attention.set_bias_kernel(kernel_before)
    return result


def _bench_model(device, preset, dtype, batch, text_tokens, new_tokens, repeats, seed) -> dict:
    if new_tokens < 2:
        raise ValueError(f"new_tokens: need >= 2 to time a decoding step (got {new_tokens})")
    models = _same_weight_models(preset, device, seed)
    model, cfg = models["none"], models["none"].config
    if text_tokens + new_tokens + 1 > cfg.max_text_tokens:
        raise ValueError(
            f"text_tokens + new_tokens must stay below max_text_tokens={cfg.max_text_tokens}"
        )
    inputs = _model_inputs(model, batch, text_tokens, seed, device)
    runner = _ModeRunner(models, device, dtype, *inputs)
    train, peak_mb = _train_times(runner, repeats)
    cached, full = _decode_times(runner, new_tokens, repeats)
    ratios, meets = model_ratios(train, cached, full)
    ms = lambda d: {m: None if v is None else round(1000 * v, 3) for m, v in d.items()}  # noqa: E731
    return {
        **_model_settings(device, preset, dtype, model, batch, text_tokens, new_tokens, repeats),
        "train_step_ms": ms(train),
        "decode_ms_per_token_cached": ms(cached),
        "decode_ms_per_token_recompute": ms(full),
        "peak_train_memory_mb": peak_mb,
        "ratios": ratios,
        "targets": dict(MODEL_TARGETS),
        "meets_targets": meets,
        "prior_memory_at_published_sizes": prior_memory(batch, dtype),
        "provenance": provenance(),
    }


def _same_weight_models(preset: str, device, seed: int) -> dict:
    """One model per mode (:data:`MODES`) of ``preset``, with identical weights."""
    import torch

    def config(mode: str) -> ModelConfig:
        if preset == "tiny":
            return ModelConfig.tiny(mode=mode)
        return ModelConfig.published(mode=mode, pretrained=False)

    models = {}
    for mode in MODES:
        torch.manual_seed(seed)
        models[mode] = ReportModel.from_config(config(mode)).to(device)
    reference = models["none"].state_dict()
    for mode in MODES:  # equal sizes and equal weights
        state = models[mode].state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.items())
    return models


def _model_inputs(model, batch: int, text_tokens: int, seed: int, device) -> tuple:
    """One fixed batch: (encoder features (B, P, E), text ids (B, T), priors (B, L, P)),
    about 30% of the priors 0 (what strict excludes)."""
    import torch

    patches = model.num_patches
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, patches, model.encoder_width, generator=gen).to(device)
    ids = torch.randint(3, len(model.tokenizer), (batch, text_tokens), generator=gen).to(device)
    priors = torch.rand(batch, model.num_decoder_layers, patches, generator=gen)
    priors = priors.masked_fill(priors < 0.3, 0.0).to(device)  # strict excludes ~30%
    return features, ids, priors


class _ModeRunner:
    """The models of each mode on one fixed batch: a training step, a greedy decoding."""

    def __init__(self, models: dict, device, dtype: str, features, ids, priors):
        import torch

        self.models, self.features, self.ids, self.priors = models, features, ids, priors
        self.device = device
        self.cuda = device.type == "cuda"
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if dtype == "bfloat16"
            else contextlib.nullcontext()
        )
        self.sync = (lambda: torch.cuda.synchronize(device)) if self.cuda else _no_sync

    def train_step(self, mode: str) -> None:
        m = self.models[mode]
        m.zero_grad(set_to_none=True)
        with self.autocast:
            loss = m(
                image_features=self.features,
                input_ids=self.ids,
                priors=self.priors,
                labels=self.ids,
            ).loss
        loss.backward()

    def decode(self, mode: str, steps: int, cache: bool) -> None:
        with self.autocast:
            self.models[mode].generate_ids(
                image_features=self.features,
                priors=self.priors,
                max_new_tokens=steps,
                use_cache=cache,
                stop_at_eos=False,
            )

    def mode_times(self, fn, warmup: int, count: int, stat) -> dict[str, float]:
        """``stat`` of the seconds of ``fn(mode)`` per mode, modes interleaved."""
        fns = {mode: functools.partial(fn, mode) for mode in MODES}
        runs = _interleaved_runs(fns, count, warmup, self.sync)
        return {mode: stat([seconds for seconds, _ in r]) for mode, r in runs.items()}


def _train_times(runner: _ModeRunner, repeats: int) -> tuple[dict, dict]:
    """(median seconds of a training step per mode, on CUDA its peak memory in MiB);
    leaves the models in eval mode without gradients."""
    import torch

    for m in runner.models.values():
        m.train()
    train = runner.mode_times(runner.train_step, 3, repeats, statistics.median)
    peak_mb = {}
    if runner.cuda:
        device = runner.device
        for mode in MODES:
            torch.cuda.reset_peak_memory_stats(device)
            runner.train_step(mode)
            runner.sync()
            peak_mb[mode] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    for m in runner.models.values():
        m.zero_grad(set_to_none=True)
        m.eval()
    return train, peak_mb


def _decode_times(runner: _ModeRunner, new_tokens: int, repeats: int) -> tuple[dict, dict]:
    """Seconds per decoded token per mode, (with the KV cache, recomputing), prefill
    excluded: ``(t(new_tokens) - t(1)) / (new_tokens - 1)``, best of the repeats."""
    dec_repeats, full_repeats = repeats, max(3, repeats // 3)

    def best(steps: int, cache: bool, warmup: int, count: int) -> dict[str, float]:
        decode = lambda mode: runner.decode(mode, steps, cache)  # noqa: E731
        return runner.mode_times(decode, warmup, count, min)

    # decoding is bound by kernel launches and Python on a GPU: its median moved by up to
    # 15% between identical runs on an H200, its minimum (best of) much less
    cached_n = best(new_tokens, True, 2, dec_repeats)
    cached_1 = best(1, True, 2, dec_repeats)
    full_n = best(new_tokens, False, 1, full_repeats)
    full_1 = best(1, False, 1, full_repeats)

    return (
        per_token_times(cached_n, cached_1, new_tokens),
        per_token_times(full_n, full_1, new_tokens),
    )


def per_token_times(t_n: dict, t_1: dict, new_tokens: int) -> dict[str, float | None]:
    """Seconds per decoding step of each mode: ``(t(new_tokens) - t(1)) / (new_tokens - 1)``.

    ``None`` where ``t(new_tokens) <= t(1)``: at a toy size on a busy machine the timing
    noise exceeds the steps' cost, and no step time was measured (not a zero)."""
    return {m: (t_n[m] - t_1[m]) / (new_tokens - 1) if t_n[m] > t_1[m] else None for m in t_n}


def _ratio(num: float | None, den: float | None, digits: int) -> float | None:
    """``round(num / den, digits)``, or ``None`` where either time was not measured."""
    return None if num is None or den is None else round(num / den, digits)


def model_ratios(train: dict, cached: dict, full: dict) -> tuple[dict, bool | None]:
    """(the ratios vs none and the cache speed-ups, whether both targets are met).

    A ratio of a time that was not measured (``None``, see :func:`per_token_times`) is
    ``None``, and so is the verdict when it needs one."""
    ratios = {}
    for mode in ("soft", "strict"):
        ratios[f"train_step_{mode}_vs_none"] = _ratio(train[mode], train["none"], 3)
        ratios[f"decode_{mode}_vs_none"] = _ratio(cached[mode], cached["none"], 3)
    for mode in MODES:
        ratios[f"cache_speedup_{mode}"] = _ratio(full[mode], cached[mode], 2)
    checked = [
        (ratios[f"{kind}_{m}_vs_none"], MODEL_TARGETS[f"{kind}_vs_none"])
        for kind in ("train_step", "decode")
        for m in ("soft", "strict")
    ]
    if any(ratio is None for ratio, _ in checked):
        return ratios, None
    return ratios, all(ratio <= target for ratio, target in checked)


def _model_settings(device, preset, dtype, model, batch, text_tokens, new_tokens, repeats) -> dict:
    """What the model benchmark ran: sizes, device, kernel, threads."""
    import torch

    cuda = device.type == "cuda"
    decoder = model.decoder.config
    return {
        "benchmark": "model",
        "preset": preset,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "dtype": dtype,
        "batch": batch,
        "text_tokens": text_tokens,
        "new_tokens": new_tokens,
        "num_patches": model.num_patches,
        "decoder_layers": model.num_decoder_layers,
        "decoder_width": decoder.n_embd,
        "attn_implementation": model.config.attn_implementation,
        "bias_kernel": attention.bias_kernel(
            device,
            torch.bfloat16 if dtype == "bfloat16" else torch.float32,
            decoder.n_embd // decoder.n_head,
        ),
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def prior_memory(batch: int, dtype: str) -> dict:
    """The prior as kept, a (L, B, 1, 1, P) bias, against materialised (L, B, 1, T, T)
    masks, at the published sizes (:meth:`ModelConfig.published`: 32 x 32 patches, GPT-2
    small's 12 layers, 1,024 text tokens; computed, not allocated)."""
    published = ModelConfig.published(pretrained=False)
    layers, patches = published.decoder["n_layer"], published.num_patches
    itemsize = 2 if dtype == "bfloat16" else 4
    total = published.num_positions  # patches + text tokens
    bias_bytes = layers * batch * patches * itemsize  # (L, B, 1, 1, P)
    mask_bytes = layers * batch * total * total * itemsize  # (L, B, 1, T, T)
    return {
        "layers": layers,
        "patches": patches,
        "text_tokens": total - patches,
        "batch": batch,
        "bytes_per_value": itemsize,
        "bias_L_B_1_1_P_bytes": bias_bytes,
        "masks_L_B_1_T_T_bytes": mask_bytes,
        "masks_vs_bias": round(mask_bytes / bias_bytes, 1),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_model_table(result: dict) -> str:
    """The model benchmark as an aligned table: one column per mode, ratios vs none."""
    modes = MODES
    r = result["ratios"]
    rows = [
        ("train step (fwd+bwd) ms", [result["train_step_ms"][m] for m in modes]),
        ("  vs none (target <= 1.10)", [1.0] + [r[f"train_step_{m}_vs_none"] for m in modes[1:]]),
        ("decode ms/token, KV cache", [result["decode_ms_per_token_cached"][m] for m in modes]),
        ("  vs none (target <= 1.15)", [1.0] + [r[f"decode_{m}_vs_none"] for m in modes[1:]]),
        ("decode ms/token, recompute", [result["decode_ms_per_token_recompute"][m] for m in modes]),
        ("  cache speed-up", [r[f"cache_speedup_{m}"] for m in modes]),
    ]
    if result["peak_train_memory_mb"]:
        rows.append(("peak train memory MiB", [result["peak_train_memory_mb"][m] for m in modes]))
    label = max(len(name) for name, _ in rows)
    head = (
        f"model benchmark: preset={result['preset']}, device={result['device']} "
        f"({result['device_name']}), dtype={result['dtype']}, batch={result['batch']}, "
        f"text={result['text_tokens']}, new={result['new_tokens']}, "
        f"patches={result['num_patches']}, layers={result['decoder_layers']}, "
        f"threads={result['torch_threads']}, bias kernel={result['bias_kernel']}, "
        f"train: median of {result['repeats']}, decode: best of {result['repeats']}"
    )
    lines = [head, f"  {'':<{label}}  " + "".join(f"{m:>10}" for m in modes)]
    cell = lambda v: "n/a" if v is None else v  # noqa: E731 (a step too short to time)
    lines += [f"  {n:<{label}}  " + "".join(f"{cell(v):>10}" for v in vals) for n, vals in rows]
    mem = result["prior_memory_at_published_sizes"]
    lines.append(
        f"  prior memory at published sizes (L={mem['layers']}, P={mem['patches']}, "
        f"T={mem['patches'] + mem['text_tokens']}, batch {mem['batch']}): "
        f"(L,B,1,1,P) bias {_bytes(mem['bias_L_B_1_1_P_bytes'])} vs (L,B,1,T,T) masks "
        f"{_bytes(mem['masks_L_B_1_T_T_bytes'])} = {mem['masks_vs_bias']}x"
    )
    verdict = {True: "yes", False: "no", None: "not measured (a step too short to time)"}
    lines.append(f"  meets targets: {verdict[result['meets_targets']]}")
    return "\n".join(lines)


# --- cxr bench features ----------------------------------------------------------------

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
    import torch

    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    for name, value in (("n", n), ("batch", batch), ("size", size), ("repeats", repeats)):
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return _bench_features(Path(tmp), n, batch, size, repeats, seed)
    finally:
        torch.set_num_threads(before)


def _bench_features(tmp: Path, n: int, batch: int, size: int, repeats: int, seed: int) -> dict:
    model, cache, report, ids, paths, texts = _features_setup(tmp, n, batch, size, seed)
    epochs = _FeatureEpochs(model, cache, _feature_batches(model, ids, paths, texts, batch))
    max_diff = epochs.warm_up()
    runs = _interleaved_runs({"uncached": epochs.uncached, "cached": epochs.cached}, repeats)
    return {
        **_features_settings(n, size, batch, repeats, model, epochs.batches),
        **_features_times(report, cache, runs["uncached"], runs["cached"]),
        "max_abs_diff_cached_vs_encoder": max_diff,
        "provenance": provenance(),
    }


def _features_setup(tmp: Path, n: int, batch: int, size: int, seed: int) -> tuple:
    """An ``n``-image phantom under ``tmp``, the tiny soft model and its built feature
    cache: (model, cache, build report, image ids, image paths, Findings)."""
    import torch

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
    import torch

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
        import torch

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
        import torch

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
    import torch

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
        "cpu": _cpu_name(),
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


# --- cxr bench labeler -----------------------------------------------------------------

LABELER_TARGET_REPORTS_PER_S = 1000.0


def bench_labeler(
    n: int = 2000,
    repeats: int = 3,
    seed: int = 0,
    iu: str | os.PathLike | None = None,
) -> dict:
    """Report labeler (``cxrlib-rule-v3``) throughput on one core, reports/s.

    Measured in one process (pure Python: one core), best of ``repeats``, after one
    warm-up: :func:`cxrlib.metrics.labeler.label_reports` on ``n`` synthetic Findings
    written by the phantom text generator (``cxrlib.data.phantom``; no real report
    text), and the same on the FINDINGS + IMPRESSION of every IU X-ray report when
    ``iu`` (default ``../shared/data/iu-xray/NLMCXR_reports.tgz``) exists. Ratios:
    each rate vs the 1,000 reports/s target; the lexicon compilation time is given
    apart (a one-off per process).
    """
    import numpy as np

    texts = [
        findings_text(phantom_study(i, seed), np.random.default_rng([seed, i, 1])) for i in range(n)
    ]
    t0 = time.perf_counter()
    labeler = lab.Labeler()
    compile_s = time.perf_counter() - t0
    labeler.label_many(texts[: min(n, 50)])  # warm-up
    rate_phantom, _ = _best_rate(lambda: labeler.label_many(texts), n, repeats)
    rates = {"phantom_findings": round(rate_phantom, 1)}
    ratios = {"phantom_vs_target_1000": round(rate_phantom / LABELER_TARGET_REPORTS_PER_S, 2)}
    sizes = {"phantom_findings_mean_chars": round(float(np.mean([len(t) for t in texts])), 1)}
    iu_path = None
    if iu is None:
        iu = SHARED_REPORTS if SHARED_REPORTS.is_file() else None
    if iu is not None:
        iu_path = str(iu)
        reports = [
            report_text(r.sections.get("FINDINGS", ""), r.sections.get("IMPRESSION", ""))
            for r in iter_reports(iu)
        ]
        rate_iu, _ = _best_rate(lambda: labeler.label_many(reports), len(reports), repeats)
        rates["iu_findings_impression"] = round(rate_iu, 1)
        ratios["iu_vs_target_1000"] = round(rate_iu / LABELER_TARGET_REPORTS_PER_S, 2)
        sizes["iu_reports"] = len(reports)
        sizes["iu_mean_chars"] = round(float(np.mean([len(t) for t in reports])), 1)
    return {
        "benchmark": "labeler",
        "labeler": lab.LABELER_NAME,
        "n": n,
        "repeats": repeats,
        "iu_reports_path": iu_path,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "lexicon_compile_s": round(compile_s, 4),
        "reports_per_s": rates,
        "ratios": ratios,
        "text_sizes": sizes,
        "provenance": provenance(),
    }


def format_labeler_table(result: dict) -> str:
    """The labeler benchmark as an aligned two-column text table."""
    rows = [(f"reports/s, {k}", v) for k, v in result["reports_per_s"].items()]
    rows += list(result["ratios"].items())
    rows += [("lexicon compile s (once)", result["lexicon_compile_s"])]
    width = max(len(k) for k, _ in rows)
    head = (
        f"labeler benchmark ({result['labeler']}, one core): n={result['n']} synthetic, "
        f"best of {result['repeats']}"
    )
    return "\n".join([head] + [f"  {k:<{width}}  {v}" for k, v in rows])
