"""``cxr bench model`` runs end to end at a toy size and reports what it measured."""

import json

import pytest
import torch

from cxrlib.cli import main
from cxrlib.experiment.bench.model import (
    bench_model,
    format_model_table,
    model_ratios,
    per_token_times,
    prior_memory,
)
from cxrlib.model import ModelConfig, attention
from cxrlib.model.attention import AnatomicalPrior


@pytest.mark.parametrize("kernel", ["auto", "fold"])
def test_bench_model_reports_ratios_and_its_bias_kernel(kernel, tmp_path):
    out = tmp_path / "model.json"
    args = ["bench", "model", "--batch", "1", "--text-tokens", "4", "--new-tokens", "2"]
    args += ["--repeats", "1", "--threads", "1", "--bias-kernel", kernel, "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["bias_kernel"] == ("mask" if kernel == "auto" else "fold")
    assert attention.bias_kernel(attention.torch.device("cpu")) == "mask"  # restored
    cached = result["decode_ms_per_token_cached"]
    for mode in ("soft", "strict"):
        assert result["ratios"][f"train_step_{mode}_vs_none"] > 0
        # at this toy size t(2 tokens) - t(1 token) can come out <= 0 on a busy machine:
        # then no step time was measured, and no ratio is made up from it
        decode = result["ratios"][f"decode_{mode}_vs_none"]
        unmeasured = cached[mode] is None or cached["none"] is None
        assert decode is None if unmeasured else decode > 0
    _check_model_result(result, batch=1, text_tokens=4, new_tokens=2, repeats=1)
    text = format_model_table(result)  # what `cxr bench model` prints, n/a included
    assert f"bias kernel={result['bias_kernel']}" in text and "meets targets: " in text


def test_bench_model_with_the_encoder_in_the_step_encodes_pixels(monkeypatch):
    from cxrlib.model import ReportModel

    shapes = []
    encode = ReportModel.encode_images

    def counted(self, pixel_values):
        shapes.append(tuple(pixel_values.shape))
        return encode(self, pixel_values)

    monkeypatch.setattr(ReportModel, "encode_images", counted)
    kw = dict(batch=2, text_tokens=4, new_tokens=2, repeats=1, threads=1)
    result = bench_model(**kw, encoder_in_step=True)
    size = ModelConfig.tiny().image_size
    # every training step of every mode (3 warm-ups + 1 timed each) encodes the batch;
    # decoding reads the features
    assert shapes == [(2, 3, size, size)] * 12
    assert result["train_step_input"] == "pixels (encoder in the step)"
    assert all(v > 0 for v in result["train_step_ms"].values())
    shapes.clear()
    assert bench_model(**kw)["train_step_input"] == "features" and shapes == []


def test_per_token_times_are_differences_and_never_made_up():
    t_n = {"none": 0.50, "soft": 0.62, "strict": 0.40}
    t_1 = {"none": 0.10, "soft": 0.12, "strict": 0.45}  # strict: noise above the steps
    got = per_token_times(t_n, t_1, new_tokens=5)
    assert got["none"] == pytest.approx(0.40 / 4) and got["soft"] == pytest.approx(0.50 / 4)
    assert got["strict"] is None


def test_model_ratios_and_the_verdict_from_known_times():
    train = {"none": 2.0, "soft": 2.1, "strict": 2.4}
    cached = {"none": 1.0, "soft": 1.1, "strict": 1.0}
    full = {"none": 3.0, "soft": 3.3, "strict": 4.0}
    ratios, meets = model_ratios(train, cached, full)
    assert ratios == {
        "train_step_soft_vs_none": 1.05,
        "train_step_strict_vs_none": 1.2,
        "decode_soft_vs_none": 1.1,
        "decode_strict_vs_none": 1.0,
        "cache_speedup_none": 3.0,
        "cache_speedup_soft": 3.0,
        "cache_speedup_strict": 4.0,
    }
    assert meets is False  # strict's training step is 1.2x none's (target 1.10)
    assert model_ratios({**train, "strict": 2.2}, cached, full)[1] is True
    ratios, meets = model_ratios(train, {**cached, "soft": None}, full)
    assert ratios["decode_soft_vs_none"] is None and ratios["cache_speedup_soft"] is None
    assert meets is None  # a target that was not measured is neither met nor missed


def test_prior_memory_is_what_the_model_keeps_at_the_published_sizes():
    published = ModelConfig.published(pretrained=False)
    memory = prior_memory(batch=2, dtype="float32")
    layers, patches = published.decoder["n_layer"], published.num_patches
    assert (layers, patches, memory["text_tokens"]) == (12, 1024, published.max_text_tokens)
    prior = AnatomicalPrior.build(torch.rand(2, layers, patches), "soft", 1.0, patches)
    assert memory["bias_L_B_1_1_P_bytes"] == prior.bias.nbytes  # the bias the model keeps
    total = published.num_positions
    mask = torch.empty(1, 2, 1, total, total, dtype=torch.float32)  # one layer's masks
    assert memory["masks_L_B_1_T_T_bytes"] == layers * mask.nbytes
    ratio = memory["masks_L_B_1_T_T_bytes"] / memory["bias_L_B_1_1_P_bytes"]
    assert memory["masks_vs_bias"] == round(ratio, 1)


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
        assert all(v is None or v >= 0 for v in per_mode.values()), key  # ms to 3 decimals
    assert all(v > 0 for v in times["train_step_ms"].values())
    ratios = result["ratios"]
    assert set(ratios) == {f"train_step_{m}_vs_none" for m in modes[1:]} | {
        f"decode_{m}_vs_none" for m in modes[1:]
    } | {f"cache_speedup_{m}" for m in modes}

    def same_ratio(reported, num, den, digits):
        # reported: round(num / den, digits) of the unrounded times; num, den: in ms,
        # rounded to 3 decimals (error <= 5e-4 each); the tolerance covers both roundings
        if num is None or den is None:  # a step too short to time: no ratio either
            assert reported is None
            return
        if den < 0.05:  # too few digits left to recompute it
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
    checked = [ratios[f"train_step_{m}_vs_none"] for m in modes[1:]]
    checked += [ratios[f"decode_{m}_vs_none"] for m in modes[1:]]
    assert result["meets_targets"] == (
        None
        if None in checked
        else all(
            ratios[f"train_step_{m}_vs_none"] <= targets["train_step_vs_none"]
            and ratios[f"decode_{m}_vs_none"] <= targets["decode_vs_none"]
            for m in modes[1:]
        )
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
