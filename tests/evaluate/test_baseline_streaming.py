"""The retrieval baseline streams the cached features: same answers as in memory, and
peak memory that does not grow with the number of training images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from cxrlib.evaluate import baselines
from cxrlib.evaluate.baselines import nearest_reports, pooled
from cxrlib.training.features import LazyFeatures


def _shards(folder: Path, tensors: list[torch.Tensor]) -> list[str]:
    names = []
    for k, t in enumerate(tensors):
        names.append(f"shard-{k:05d}.safetensors")
        save_file({"features": t.contiguous()}, str(folder / names[-1]))
    return names


def test_streamed_retrieval_equals_in_memory(tmp_path):
    torch.manual_seed(0)
    bank = torch.randn(23, 6, 4).half()
    bank[17] = bank[3]  # a tie across shards: the earliest row wins
    bank[9] = bank[3] * 2  # cosine ignores the norm
    names = _shards(tmp_path, [bank[:10], bank[10:20], bank[20:]])
    order = list(range(23))[::-1]  # rows out of shard order, and a repeat
    order.append(5)
    where = [(names[i // 10], i % 10) for i in order]
    lazy = LazyFeatures(tmp_path, where, 6, 4)
    texts = [f"t{i}" for i in order]
    queries = torch.cat([bank[[3, 5, 20]], torch.randn(8, 6, 4).half()])
    (tmp_path / "q").mkdir()
    qnames = _shards(tmp_path / "q", [queries])
    lazy_q = LazyFeatures(tmp_path / "q", [(qnames[0], i) for i in range(11)], 6, 4)
    expected = nearest_reports(bank[order], texts, queries, batch_size=4)
    for size in (1, 3, 1024):
        assert nearest_reports(lazy, texts, lazy_q, batch_size=size) == expected
        assert torch.equal(pooled(lazy, size), pooled(bank[order]))
    assert expected[1][0] == order.index(17)  # ties: the earliest bank position


def test_retrieval_over_bank_blocks_equals_one_block(monkeypatch):
    torch.manual_seed(1)
    bank = torch.randn(10, 6, 4)
    bank[7] = bank[2]  # a tie across blocks of 3: the earlier block wins
    bank[8] = bank[4]  # a tie across blocks
    bank[1] = bank[0] * 2  # a tie inside one block (cosine ignores the norm; x2 is exact)
    texts = [f"t{i}" for i in range(10)]
    queries = torch.cat([bank[[2, 4, 0, 9]], torch.randn(5, 6, 4)])
    whole = nearest_reports(bank, texts, queries)
    assert whole[1][:4] == [2, 4, 0, 9]
    for rows in (1, 3, 4):
        monkeypatch.setattr(baselines, "BANK_ROWS", rows)
        assert nearest_reports(bank, texts, queries, batch_size=2) == whole


_RSS = """
import resource, sys
import torch
from safetensors import safe_open
from cxrlib.evaluate.baselines import pooled
from cxrlib.training.features import LazyFeatures

folder, n, per, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
names = [f"shard-{k:05d}.safetensors" for k in range(n // per)]
where = [(names[i // per], i % per) for i in range(n)]
lazy = LazyFeatures(folder, where, 1024, 16)
pooled(torch.zeros(2, 4, 16, dtype=torch.float16))  # warm up: lazy imports, first allocations
safe_open(f"{folder}/{names[0]}", framework="pt").get_slice("features")[0:1]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "stream":
    bank = pooled(lazy)
else:  # the former path: every image's features in one tensor, then pooled
    bank = pooled(torch.stack([lazy[i] for i in range(n)]))
assert bank.shape == (n, 16)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


def _peak_kb(folder: Path, n: int, per: int, mode: str = "stream") -> int:
    # a fixed glibc mmap threshold: blocks over 1 MB are returned to the system when
    # freed, instead of the heap growing over the first shards (allocator warm-up noise)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    done = subprocess.run(
        [sys.executable, "-c", _RSS, str(folder), str(n), str(per), mode],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=300,
    )
    return int(done.stdout.split()[-1])


def test_streamed_pooling_memory_is_flat_in_n(tmp_path):
    # 32 KB of features per image (1024 patches x 16 dims, float16), 256 images per 8 MB
    # shard; the 10x cache hard-links one shard 80 times (the reads are the same). The
    # pooled bank (64 B per image) and the per-item bookkeeping (~0.3 KB) are what grows.
    per, n = 256, 2048
    save_file({"features": torch.randn(per, 1024, 16).half()}, str(tmp_path / "one"))
    for k in range(10 * n // per):
        os.link(tmp_path / "one", tmp_path / f"shard-{k:05d}.safetensors")
    small, large = _peak_kb(tmp_path, n, per), _peak_kb(tmp_path, 10 * n, per)
    # measured: about 34 MB at N, 38 MB at 10N (the former in-memory path: 0.26 -> 2.5 GB);
    # 1.2x, plus 4 MB of slack for allocator noise
    assert large <= 1.2 * small + 4 * 1024, (small, large)
