"""Phantom generation speed: images/s on one core at 256x256, with same-run ratios.

Usage: python benchmarks/bench_phantom.py [--n 200] [--size 256]   (= cxr bench phantom)
"""

import sys

from cxrlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "phantom", *sys.argv[1:]]))
