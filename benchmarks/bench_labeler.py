"""Report labeler speed: reports/s of the rule-based labeler on one core on synthetic
(phantom) Findings and, when ../shared is present, on the IU X-ray reports, with the ratio against
the 1,000 reports/s target.

Usage: python benchmarks/bench_labeler.py [--n 2000] [--repeats 3] [--iu TGZ]
       (= cxr bench labeler)
"""

import sys

from cxrlib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "labeler", *sys.argv[1:]]))
