"""Benchmarks behind ``cxr bench``: each prints a table and JSON, and every speed is
also given as a ratio against a baseline measured in the same run (no timing asserts
live in the tests; speed claims live here and in ``benchmarks/README.md``)."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

from cxrlib.provenance import provenance

PHANTOM_TARGET_IMAGES_PER_S = 50.0


def bench_phantom(n: int = 200, size: int = 256, seed: int = 0) -> dict:
    """Phantom generation speed on one core, and what it is made of.

    Measures, in one run: drawing only (sample + render + text, no files), the full
    single-process writer (``write_phantom(workers=1)``: PNGs and manifest included),
    and the writer with two processes. Ratios: full vs the 50 images/s target, full vs
    drawing only (the cost of encoding and writing), two processes vs one.
    """
    from cxrlib.data.phantom import make_study_row, write_phantom

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

    from cxrlib.anatomy.priors import gaussian_kernel1d, schedule

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

    from cxrlib.anatomy.priors import (
        PriorConfig,
        downsample_to_grid,
        layer_priors,
        masks_to_priors,
    )
    from cxrlib.anatomy.priors import schedule as layer_schedule

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
    benches = {"phantom": bench_phantom, "priors": bench_priors, "model": bench_model}
    if name not in benches:
        raise ValueError(f"unknown benchmark {name!r} (choose from {', '.join(benches)})")
    result = benches[name](**kwargs)
    print(format_table(result))
    text = json.dumps(result, indent=2)
    print(text)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return result


# --- cxr bench model -------------------------------------------------------------------

MODEL_TARGETS = {"train_step_vs_none": 1.10, "decode_vs_none": 1.15}
# the published sizes for the prior-memory comparison: 32 x 32 patches, GPT-2 small
PUBLISHED_PATCHES, PUBLISHED_LAYERS, PUBLISHED_TEXT_TOKENS = 1024, 12, 1024
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
) -> dict:
    """Cost of the anatomical attention: soft and strict against none, same run, same sizes.

    Three models with identical weights (one per mode; the ``published`` preset from
    configs, random weights, no download) on ``device``. Measured, interleaving the
    modes and taking the median of ``repeats`` after warm-up:

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
    preset's value; ``threads`` 0 keeps torch's CPU thread count.
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
    try:
        return _bench_model(torch.device(device), preset, dtype, *sizes, seed)
    finally:
        torch.set_num_threads(before)


def _bench_model(device, preset, dtype, batch, text_tokens, new_tokens, repeats, seed) -> dict:
    import contextlib
    import statistics

    import torch

    from cxrlib.model import ModelConfig, ReportModel

    if new_tokens < 2:
        raise ValueError(f"new_tokens: need >= 2 to time a decoding step (got {new_tokens})")
    modes = ("none", "soft", "strict")
    cuda = device.type == "cuda"

    def config(mode: str) -> ModelConfig:
        if preset == "tiny":
            return ModelConfig.tiny(mode=mode)
        return ModelConfig.published(mode=mode, pretrained=False)

    models = {}
    for mode in modes:
        torch.manual_seed(seed)
        models[mode] = ReportModel.from_config(config(mode)).to(device)
    reference = models["none"].state_dict()
    for mode in modes:  # equal sizes and equal weights
        state = models[mode].state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.items())
    cfg = models["none"].config
    if text_tokens + new_tokens + 1 > cfg.max_text_tokens:
        raise ValueError(
            f"text_tokens + new_tokens must stay below max_text_tokens={cfg.max_text_tokens}"
        )
    model = models["none"]
    num_layers, patches = model.num_decoder_layers, model.num_patches
    gen = torch.Generator().manual_seed(seed)
    width = model.encoder.config.hidden_size
    features = torch.randn(batch, patches, width, generator=gen).to(device)
    ids = torch.randint(3, len(model.tokenizer), (batch, text_tokens), generator=gen).to(device)
    priors = torch.rand(batch, num_layers, patches, generator=gen)
    priors = priors.masked_fill(priors < 0.3, 0.0).to(device)  # strict excludes ~30%
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if dtype == "bfloat16"
        else contextlib.nullcontext()
    )

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    def train_step(mode: str) -> None:
        m = models[mode]
        m.zero_grad(set_to_none=True)
        with autocast:
            loss = m(image_features=features, input_ids=ids, priors=priors, labels=ids).loss
        loss.backward()

    def decode(mode: str, steps: int, cache: bool) -> None:
        with autocast:
            models[mode].generate_ids(
                image_features=features,
                priors=priors,
                max_new_tokens=steps,
                use_cache=cache,
                stop_at_eos=False,
            )

    def median_times(fn, warmup: int, count: int) -> dict[str, float]:
        """Median seconds of fn(mode) per mode; modes interleaved, order rotated."""
        times: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(warmup + count):
            order = modes[r % 3 :] + modes[: r % 3]
            for mode in order:
                sync()
                t0 = time.perf_counter()
                fn(mode)
                sync()
                if r >= warmup:
                    times[mode].append(time.perf_counter() - t0)
        return {m: statistics.median(v) for m, v in times.items()}

    for m in models.values():
        m.train()
    train = median_times(train_step, 3, repeats)
    peak_mb = {}
    if cuda:
        for mode in modes:
            torch.cuda.reset_peak_memory_stats(device)
            train_step(mode)
            sync()
            peak_mb[mode] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    for m in models.values():
        m.zero_grad(set_to_none=True)
        m.eval()
    dec_repeats, full_repeats = repeats, max(3, repeats // 3)
    cached_n = median_times(lambda m: decode(m, new_tokens, True), 2, dec_repeats)
    cached_1 = median_times(lambda m: decode(m, 1, True), 2, dec_repeats)
    full_n = median_times(lambda m: decode(m, new_tokens, False), 1, full_repeats)
    full_1 = median_times(lambda m: decode(m, 1, False), 1, full_repeats)

    def per_token(t_n: dict, t_1: dict) -> dict[str, float]:
        return {m: max(t_n[m] - t_1[m], 1e-9) / (new_tokens - 1) for m in modes}

    cached, full = per_token(cached_n, cached_1), per_token(full_n, full_1)
    ratios = {}
    for mode in ("soft", "strict"):
        ratios[f"train_step_{mode}_vs_none"] = round(train[mode] / train["none"], 3)
        ratios[f"decode_{mode}_vs_none"] = round(cached[mode] / cached["none"], 3)
    for mode in modes:
        ratios[f"cache_speedup_{mode}"] = round(full[mode] / cached[mode], 2)
    meets = all(
        ratios[f"train_step_{m}_vs_none"] <= MODEL_TARGETS["train_step_vs_none"]
        and ratios[f"decode_{m}_vs_none"] <= MODEL_TARGETS["decode_vs_none"]
        for m in ("soft", "strict")
    )
    itemsize = 2 if dtype == "bfloat16" else 4
    total = PUBLISHED_PATCHES + PUBLISHED_TEXT_TOKENS
    bias_bytes = PUBLISHED_LAYERS * batch * PUBLISHED_PATCHES * itemsize  # (L, B, 1, 1, P)
    mask_bytes = PUBLISHED_LAYERS * batch * total * total * itemsize  # (L, B, 1, T, T)
    ms = lambda d: {m: round(1000 * v, 3) for m, v in d.items()}  # noqa: E731
    return {
        "benchmark": "model",
        "preset": preset,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "dtype": dtype,
        "batch": batch,
        "text_tokens": text_tokens,
        "new_tokens": new_tokens,
        "num_patches": patches,
        "decoder_layers": num_layers,
        "decoder_width": model.decoder.config.n_embd,
        "attn_implementation": cfg.attn_implementation,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "train_step_ms": ms(train),
        "decode_ms_per_token_cached": ms(cached),
        "decode_ms_per_token_recompute": ms(full),
        "peak_train_memory_mb": peak_mb,
        "ratios": ratios,
        "targets": dict(MODEL_TARGETS),
        "meets_targets": meets,
        "prior_memory_at_published_sizes": {
            "layers": PUBLISHED_LAYERS,
            "patches": PUBLISHED_PATCHES,
            "text_tokens": PUBLISHED_TEXT_TOKENS,
            "batch": batch,
            "bytes_per_value": itemsize,
            "bias_L_B_1_1_P_bytes": bias_bytes,
            "masks_L_B_1_T_T_bytes": mask_bytes,
            "masks_vs_bias": round(mask_bytes / bias_bytes, 1),
        },
        "provenance": provenance(),
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
    modes = ("none", "soft", "strict")
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
        f"threads={result['torch_threads']}, median of {result['repeats']}"
    )
    lines = [head, f"  {'':<{label}}  " + "".join(f"{m:>10}" for m in modes)]
    lines += [f"  {n:<{label}}  " + "".join(f"{v:>10}" for v in vals) for n, vals in rows]
    mem = result["prior_memory_at_published_sizes"]
    lines.append(
        f"  prior memory at published sizes (L={mem['layers']}, P={mem['patches']}, "
        f"T={mem['patches'] + mem['text_tokens']}, batch {mem['batch']}): "
        f"(L,B,1,1,P) bias {_bytes(mem['bias_L_B_1_1_P_bytes'])} vs (L,B,1,T,T) masks "
        f"{_bytes(mem['masks_L_B_1_T_T_bytes'])} = {mem['masks_vs_bias']}x"
    )
    lines.append(f"  meets targets: {'yes' if result['meets_targets'] else 'no'}")
    return "\n".join(lines)
