"""The full profile's data path at MIMIC-CXR scale, rehearsed: every stage (adapter,
validation, split, segmentation, priors and their cache, the loader at 512 px,
tokenisation, published-size training steps and generation on CPU, evaluation, figures)
on the MIMIC-CXR-JPG rehearsal layout at each N, each stage in its own process: time,
ms per image, peak RSS and disk.

Usage: python benchmarks/bench_scale.py [--n 2000 20000 100000] [--sample 512] [--json F]
       (= cxr bench scale; `cxr bench costs` turns its JSON into the README's tables)
"""

import sys

from cxrlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "scale", *sys.argv[1:]]))
