"""Cost of the anatomical attention: training step (forward + backward) and decode ms/token
with the KV cache for soft and strict against none in the same run, the KV cache's
speed-up over full recomputation, and the prior's memory against materialised per-layer
(T x T) masks at the published sizes.

Usage: python benchmarks/bench_model.py [--device cpu|cuda] [--preset tiny|published]
       [--dtype float32|bfloat16] [--threads N] [--json FILE]   (= cxr bench model)
"""

import sys

from cxrlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "model", *sys.argv[1:]]))
