"""Which kernel should add the per-key prior bias in a causal training pass? (GPU)

For every bias kernel of ``cxrlib.model.attention`` (mask, fold, cudnn) and PyTorch's
memory-efficient kernel called with the broadcast bias and its causal flag (efficient):

1. correctness of one attention call against a float64 reference computed term by
   term (soft and strict, bfloat16 and float32; outputs and q/k/v gradients; queries
   with no kept key excluded, as the model zeroes them);
2. one attention call, forward + backward, at the published sizes (8 images, 12 heads,
   1024 patches + 128 text tokens, head dim 64, bfloat16), against ``none`` (SDPA with
   ``is_causal``, no bias);
3. the training step of the published model (bridge + GPT-2 small on cached features,
   bfloat16 autocast) for none / soft / strict with each kernel, all in one process on
   the same models, interleaved (efficient: attention only).

Usage: python benchmarks/bench_bias_kernels.py [--json FILE] [--repeats N]
Needs CUDA; ``cxr bench model --device cuda --preset published --dtype bfloat16`` then
measures the chosen kernel with decoding. A kernel that fails is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from cxrlib.experiment.bench.model import model_inputs, preset_config, same_weight_models
from cxrlib.model import ReportModel, attention, report_model
from cxrlib.model.attention import AnatomicalPrior, fused_biased_attention

KERNELS = ("mask", "fold", "efficient", "cudnn")
DEVICE = "cuda"  # --cpu: a smoke run of this script (efficient and cudnn then fail)


def reference(q, k, v, prior, layer):
    """float64 causal attention with the bias added term by term; (B, nh, T, hs)."""
    q, k, v = q.double(), k.double(), v.double()
    length = q.shape[-2]
    att = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    bias = prior.key_bias(layer, length, torch.float64)  # (B, 1, 1, T)
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    att = (att + bias).masked_fill(~causal, float("-inf"))
    return torch.softmax(att, -1) @ v


def call(kernel, q, k, v, prior, layer):
    if kernel == "mask":  # what the model's mask path hands SDPA
        length = q.shape[-2]
        bias = prior.key_bias(layer, length, q.dtype)
        causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
        mask = torch.where(causal, bias, torch.finfo(q.dtype).min)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if kernel == "none":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    if kernel == "efficient":  # measured, not kept in the library: the slowest
        length = q.shape[-2]
        bias = prior.key_bias(layer, length, q.dtype).expand(-1, q.shape[1], length, -1)
        grad = any(t.requires_grad for t in (q, k, v))
        op = torch.ops.aten._scaled_dot_product_efficient_attention
        return op(q, k, v, bias, grad, 0.0, True, scale=q.shape[-1] ** -0.5)[0]
    return fused_biased_attention(kernel, q, k, v, prior, layer, q.shape[-1] ** -0.5)


def inputs(batch, heads, patches, text, dim, dtype, mode, seed=0):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    length = patches + text
    qkv = [
        torch.randn(batch, heads, length, dim, device=DEVICE, generator=gen, dtype=dtype)
        .mul_(1.5)
        .requires_grad_()
        for _ in range(3)
    ]
    priors = torch.rand(batch, 1, patches, device=DEVICE, generator=gen)
    priors = priors.masked_fill(priors < 0.3, 0.0)
    prior = AnatomicalPrior.build(priors, mode, 2.0, patches)
    return qkv, prior


def correctness() -> dict:
    rows = {}
    for dtype in (torch.float32, torch.bfloat16):
        for mode in ("soft", "strict"):
            (q, k, v), prior = inputs(2, 4, 64, 16, 64, dtype, mode)
            ref = reference(q, k, v, prior, 0)
            grad_out = torch.randn_like(ref)
            keep = torch.ones(q.shape[-2], dtype=torch.bool, device=DEVICE)
            if prior.first_kept is not None:
                keep[: prior.max_first_kept] = False  # rows that see no kept key
            ref_grads = torch.autograd.grad((ref * grad_out)[..., keep, :].sum(), (q, k, v))
            for kernel in KERNELS:
                name = f"{kernel}/{mode}/{str(dtype).removeprefix('torch.')}"
                try:
                    out = call(kernel, q, k, v, prior, 0)
                    grads = torch.autograd.grad(
                        (out.double() * grad_out)[..., keep, :].sum(), (q, k, v)
                    )
                except Exception as error:  # noqa: BLE001 (reported, not fatal)
                    rows[name] = f"failed: {type(error).__name__}: {error}"[:300]
                    continue
                err = (out.double() - ref)[..., keep, :].abs().max().item()
                gerr = max(
                    (g.double() - r).abs().max().item()
                    for g, r in zip(grads, ref_grads, strict=True)
                )
                rows[name] = {"out_max_abs_err": err, "grad_max_abs_err": gerr}
    return rows


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def attention_timing(repeats: int, sizes=None) -> dict:
    sizes = sizes or (8, 12, 1024, 128, 64)
    rows = {}
    for mode in ("soft", "strict"):
        (q, k, v), prior = inputs(*sizes, torch.bfloat16, mode)
        grad_out = torch.randn_like(q)
        for kernel in ("none", *KERNELS):

            def step(kernel=kernel, q=q, k=k, v=v, prior=prior, grad_out=grad_out):
                out = call(kernel, q, k, v, prior, 0)
                torch.autograd.grad(out, (q, k, v), grad_out)

            try:
                rows[f"{kernel}/{mode}"] = round(median_ms(step, repeats), 4)
            except Exception as error:  # noqa: BLE001
                rows[f"{kernel}/{mode}"] = f"failed: {type(error).__name__}: {error}"[:300]
    return rows


def setup(preset: str, text: int, batch: int = 8):
    """none / soft / strict models (equal weights, train mode) and one batch on DEVICE:
    cached encoder features, ``text`` random token ids and priors with ~30% zeros (the
    model benchmark's, :mod:`cxrlib.experiment.bench.model`)."""
    models = same_weight_models(preset, DEVICE, seed=0)
    for model in models.values():
        model.train()
    features, ids, priors = model_inputs(models["none"], batch, text, seed=0, device=DEVICE)
    return models, features, ids, priors


def interleaved(runs, run_one, repeats: int, failed: dict | None = None, warmup: int = 3):
    """Milliseconds of ``run_one(*run)`` for each run (a tuple), the order rotated every
    round, after ``warmup`` rounds. With ``failed``, a run that raises is recorded there
    and skipped from then on; without, the error propagates."""
    times: dict[tuple, list[float]] = {run: [] for run in runs}
    for r in range(warmup + repeats):
        for run in runs[r % len(runs) :] + runs[: r % len(runs)]:
            if failed is not None and run in failed:
                continue
            try:
                sync()
                t0 = time.perf_counter()
                run_one(*run)
                sync()
            except Exception as error:  # noqa: BLE001 (reported, not fatal)
                if failed is None:
                    raise
                failed[run] = f"failed: {type(error).__name__}: {error}"[:300]
                continue
            if r >= warmup:
                times[run].append(1000 * (time.perf_counter() - t0))
    return times


def model_timing(repeats: int, preset: str = "published", text: int = 128) -> dict:
    models, features, ids, priors = setup(preset, text)
    model_kernels = [k for k in KERNELS if k != "efficient"]  # not in the library
    runs = [("none", "mask")] + [(m, k) for m in ("soft", "strict") for k in model_kernels]

    def step(mode, kernel):
        attention.set_bias_kernel(kernel)
        m = models[mode]
        m.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            loss = m(image_features=features, input_ids=ids, priors=priors, labels=ids).loss
        loss.backward()

    failed: dict = {}
    times = interleaved(runs, step, repeats, failed)
    attention.set_bias_kernel("auto")
    base = statistics.median(times[("none", "mask")])
    failures = {f"{m}/{k}": error for (m, k), error in failed.items()}
    result = {"train_step_ms": {}, "vs_none": {}, "failed": failures}
    for (mode, kernel), values in times.items():
        if values:
            ms = statistics.median(values)
            result["train_step_ms"][f"{mode}/{kernel}"] = round(ms, 3)
            result["vs_none"][f"{mode}/{kernel}"] = round(ms / base, 3)
    return result


def padded_timing(repeats: int, preset: str = "published", text: int = 128) -> dict:
    """Training step on a right-padded batch (lengths text/2 .. text): the padding mask
    kept (``kept``: every mode runs the masked kernel) against dropped (``dropped``: the
    model's default, causal fused kernels), per mode; and the largest logit difference
    at real positions between the two."""
    real_check = report_model._right_padded
    models, features, ids, priors = setup(preset, text)
    batch = ids.shape[0]
    lengths = torch.linspace(text // 2, text, batch).long().to(DEVICE)
    mask = (torch.arange(text, device=DEVICE) < lengths[:, None]).long()
    labels = ids.masked_fill(mask == 0, -100)
    checks = {"kept": lambda m: False, "dropped": real_check}

    def step(mode, check):
        report_model._right_padded = checks[check]
        m = models[mode]
        m.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = m(
                image_features=features,
                input_ids=ids,
                attention_mask=mask,
                priors=priors,
                labels=labels,
            )
        out.loss.backward()

    def logits(mode, check):  # eval mode: no dropout
        report_model._right_padded = checks[check]
        with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
            out = models[mode].eval()(
                image_features=features, input_ids=ids, attention_mask=mask, priors=priors
            )
        models[mode].train()
        return out.logits.float()

    runs = [(m, c) for m in ("none", "soft", "strict") for c in checks]
    try:
        times = interleaved(runs, step, repeats)
        real = mask.bool()
        diff = {}
        for mode in ("none", "soft", "strict"):
            kept, dropped = logits(mode, "kept"), logits(mode, "dropped")
            diff[mode] = float((kept - dropped)[real].abs().max() / kept[real].abs().max())
    finally:
        report_model._right_padded = real_check
    ms = {f"{m}/{c}": round(statistics.median(v), 3) for (m, c), v in times.items()}
    base = ms["none/kept"]
    return {
        "train_step_ms": ms,
        "vs_none_kept": {k: round(v / base, 3) for k, v in ms.items()},
        "max_rel_logit_diff_real_positions": diff,
    }


def decode_profile(preset: str = "published") -> dict:
    """Top operators of 16 cached greedy decoding steps, none vs soft (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    rows = {}
    gen = torch.Generator().manual_seed(0)
    for mode in ("none", "soft"):
        torch.manual_seed(0)
        model = ReportModel.from_config(preset_config(preset, mode)).to(DEVICE).eval()
        width = model.encoder_width
        features = torch.randn(8, model.num_patches, width, generator=gen).to(DEVICE)
        priors = torch.rand(8, model.num_decoder_layers, model.num_patches, generator=gen)
        priors = priors.to(DEVICE)

        def decode(model=model, features=features, priors=priors):
            with torch.no_grad(), torch.autocast(DEVICE, dtype=torch.bfloat16):
                model.generate_ids(
                    image_features=features, priors=priors, max_new_tokens=16, stop_at_eos=False
                )

        decode()
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
        with profile(activities=activities) as prof:
            decode()
            sync()
        sort = "self_cuda_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
        rows[mode] = prof.key_averages().table(sort_by=sort, row_limit=14)
        rows[f"{mode}_ms"] = round(median_ms(decode, 5, 1), 2)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cpu", action="store_true", help="smoke run at tiny sizes on CPU")
    parser.add_argument(
        "--padded-only", action="store_true", help="only the right-padded training step"
    )
    args = parser.parse_args(argv)
    global DEVICE
    if args.cpu:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print("needs CUDA (or --cpu for a smoke run)", file=sys.stderr)
        return 2
    small = (2, 2, 64, 16, 64)
    padded = padded_timing(args.repeats, *(("tiny", 16) if args.cpu else ()))
    if args.padded_only:
        print(json.dumps(padded, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                f.write(json.dumps(padded, indent=2) + "\n")
        return 0
    result = {
        "padded_batch": padded,
        "device_name": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "correctness": correctness(),
        "attention_fwd_bwd_ms": attention_timing(args.repeats, small if args.cpu else None),
        "model": model_timing(args.repeats, *(("tiny", 16) if args.cpu else ())),
    }
    profiles = decode_profile("tiny" if args.cpu else "published")
    for mode in ("none", "soft"):
        print(f"decode profile, {mode}: {profiles[mode + '_ms']} ms per 16 tokens")
        print(profiles[mode])
    result["decode_16_tokens_ms"] = {m: profiles[m + "_ms"] for m in ("none", "soft")}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
