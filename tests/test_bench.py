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


def test_bench_model_rejects_bad_arguments():
    with pytest.raises(ValueError, match="preset"):
        bench_model(preset="huge")
    with pytest.raises(ValueError, match="bias kernel"):
        bench_model(batch=1, text_tokens=4, new_tokens=2, repeats=1, bias_kernel="flash")
