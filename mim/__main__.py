"""``python -m mim`` is the ``mim`` command."""

import sys

from mim.cli import main

sys.exit(main())
