"""Layer-prior speed: masks/s (one mask = one image's L-layer stack) for the vectorised
implementation, a naive per-image per-layer loop and the whole pipeline from 512 px masks,
with same-run ratios and the ratio against the 2,000 masks/s target.

Usage: python benchmarks/bench_priors.py [--n 4096] [--grid 32] [--layers 12]
       [--schedule thesis]   (= cxr bench priors)
"""

import sys

from cxrlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "priors", *sys.argv[1:]]))
