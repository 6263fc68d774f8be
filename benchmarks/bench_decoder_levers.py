"""Decoder training throughput of the CPU default under each efficiency lever.

One optimizer step (forward, backward, AdamW) of the CPU preset's decoder (soft mode,
4 layers, width 128) on one fixed batch of cached-feature inputs (batch 4, 64 patches,
80 text tokens: the default profile's training step), on ``--threads`` threads (1: as
the ablation trains its runs, two at a time on 2 cores). Levers, each timed in the same
run as the baseline and interleaved with it (``cxrlib.experiment.bench.harness``'s
``interleaved_runs``), reported as images/s per core and as a ratio to the baseline:

- ``eager fp32``: the baseline (what ``cxr train`` runs);
- ``torch.compile``: the model compiled (default inductor backend; compile time reported
  apart, not in the rate);
- ``bf16 autocast``: ``torch.autocast("cpu", dtype=torch.bfloat16)``; on CPUs without
  native bf16 (AVX-512 BF16 / AMX) this is emulated.

Usage: python benchmarks/bench_decoder_levers.py [--threads 1] [--steps 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from cxrlib.experiment.bench.harness import interleaved_runs
from cxrlib.model import ModelConfig, ReportModel

BATCH, TEXT_TOKENS = 4, 80


def _step_fn(model, inputs, autocast=None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast or torch.autocast("cpu", enabled=False):
            loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per lever")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = ModelConfig.cpu(mode="soft")

    def fresh():
        torch.manual_seed(0)
        return ReportModel.from_config(config).train()

    base = fresh()
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "image_features": torch.randn(BATCH, base.num_patches, base.encoder_width, generator=gen),
        "input_ids": torch.randint(3, len(base.tokenizer), (BATCH, TEXT_TOKENS), generator=gen),
        "priors": torch.rand(BATCH, base.num_decoder_layers, base.num_patches, generator=gen),
    }
    inputs["labels"] = inputs["input_ids"]
    fns = {"eager fp32": _step_fn(base, inputs)}
    compiled = fresh()
    started = time.perf_counter()
    compiled_model = torch.compile(compiled)
    fns["torch.compile"] = _step_fn(compiled_model, inputs)
    fns["torch.compile"]()  # compiles
    compile_seconds = time.perf_counter() - started
    fns["bf16 autocast"] = _step_fn(fresh(), inputs, torch.autocast("cpu", dtype=torch.bfloat16))
    runs = interleaved_runs(fns, args.steps, warmup=3)
    median = {name: statistics.median(s for s, _ in r) for name, r in runs.items()}
    per_core = {name: BATCH / m / args.threads for name, m in median.items()}
    result = {
        "threads": args.threads,
        "steps": args.steps,
        "batch": BATCH,
        "text_tokens": TEXT_TOKENS,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "images_per_s_per_core": {k: round(v, 1) for k, v in per_core.items()},
        "ratio_to_eager": {k: round(v / per_core["eager fp32"], 3) for k, v in per_core.items()},
        "compile_seconds": round(compile_seconds, 1),
    }
    for name in fns:
        print(
            f"{name:15s} {per_core[name]:7.1f} images/s per core  "
            f"x{result['ratio_to_eager'][name]:.2f} of eager"
        )
    print(f"torch.compile took {compile_seconds:.1f} s to compile")
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
