"""Encoder feature cache: seconds per training epoch with cached features against
recomputing the frozen encoder (tiny preset, CPU), its split, and the ratio against the
3x target.

Usage: python benchmarks/bench_features.py [--n 128] [--batch 16] [--size 224]
       [--threads 1] [--json PATH]   (= cxr bench features)
"""

import sys

from cxrlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "features", *sys.argv[1:]]))
