"""``cxr bench model`` runs end to end at a toy size and reports what it measured."""

import json

import pytest

from cxrlib.cli import main
from cxrlib.experiment.bench import bench_model
from cxrlib.model import attention


@pytest.mark.parametrize("kernel", ["auto", "fold"])
def test_bench_model_reports_ratios_and_its_bias_kernel(kernel, tmp_path):
    out = tmp_path / "model.json"
    args = ["bench", "model", "--batch", "1", "--text-tokens", "4", "--new-tokens", "2"]
    args += ["--repeats", "1", "--threads", "1", "--bias-kernel", kernel, "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["bias_kernel"] == ("mask" if kernel == "auto" else "fold")
    assert attention.bias_kernel(attention.torch.device("cpu")) == "mask"  # restored
    for mode in ("soft", "strict"):
        assert result["ratios"][f"train_step_{mode}_vs_none"] > 0
        # at this toy size t(2 tokens) - t(1 token) can come out <= 0 on a busy machine
        assert result["ratios"][f"decode_{mode}_vs_none"] >= 0
    memory = result["prior_memory_at_published_sizes"]
    assert memory["masks_vs_bias"] == pytest.approx(2048 * 2048 / 1024)
    _check_model_result(result, batch=1, text_tokens=4, new_tokens=2, repeats=1)


def _check_model_result(result, *, batch, text_tokens, new_tokens, repeats):
    """What the model benchmark reports is what it measured, and consistent with it."""
    modes = ("none", "soft", "strict")
    assert (result["benchmark"], result["preset"], result["device"]) == ("model", "tiny", "cpu")
    assert (result["batch"], result["text_tokens"], result["new_tokens"]) == (
        batch,
        text_tokens,
        new_tokens,
    )
    assert (result["repeats"], result["torch_threads"]) == (repeats, 1)
    times = {
        key: result[key]
        for key in ("train_step_ms", "decode_ms_per_token_cached", "decode_ms_per_token_recompute")
    }
    for key, per_mode in times.items():
        assert set(per_mode) == set(modes), key
        assert all(v >= 0 for v in per_mode.values()), key
    assert all(v > 0 for v in times["train_step_ms"].values())
    ratios = result["ratios"]
    assert set(ratios) == {f"train_step_{m}_vs_none" for m in modes[1:]} | {
        f"decode_{m}_vs_none" for m in modes[1:]
    } | {f"cache_speedup_{m}" for m in modes}

    def same_ratio(reported, num, den, digits):
        # reported: round(num / den, digits) of the unrounded times; num, den: in ms,
        # rounded to 3 decimals (error <= 5e-4 each); the tolerance covers both roundings
        if den < 0.05:  # too few digits left to recompute it (a clamped decoding step)
            return
        bound = 10**-digits / 2 + 5e-4 * (1 + num / den) / (den - 5e-4) + 1e-9
        assert reported == pytest.approx(num / den, abs=bound)

    train, cached = times["train_step_ms"], times["decode_ms_per_token_cached"]
    full = times["decode_ms_per_token_recompute"]
    for m in modes[1:]:
        same_ratio(ratios[f"train_step_{m}_vs_none"], train[m], train["none"], 3)
        same_ratio(ratios[f"decode_{m}_vs_none"], cached[m], cached["none"], 3)
    for m in modes:
        same_ratio(ratios[f"cache_speedup_{m}"], full[m], cached[m], 2)
    targets = result["targets"]
    assert result["meets_targets"] == all(
        ratios[f"train_step_{m}_vs_none"] <= targets["train_step_vs_none"]
        and ratios[f"decode_{m}_vs_none"] <= targets["decode_vs_none"]
        for m in modes[1:]
    )
    memory = result["prior_memory_at_published_sizes"]
    assert memory["batch"] == batch and memory["bytes_per_value"] == 4  # float32
    total = memory["patches"] + memory["text_tokens"]
    layers = memory["layers"]
    assert memory["bias_L_B_1_1_P_bytes"] == layers * batch * memory["patches"] * 4
    assert memory["masks_L_B_1_T_T_bytes"] == layers * batch * total * total * 4
    assert result["peak_train_memory_mb"] == {}  # measured on CUDA only


def test_bench_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="preset"):
        bench_model(preset="huge")
    with pytest.raises(ValueError, match="bias kernel"):
        bench_model(batch=1, text_tokens=4, new_tokens=2, repeats=1, bias_kernel="flash")
