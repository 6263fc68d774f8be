"""``python -m cxrlib.cli``: the ``cxr`` command (``torchrun`` and ``accelerate launch -m``
start it this way)."""

import sys

from cxrlib.cli import main

sys.exit(main())
