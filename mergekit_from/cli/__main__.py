"""``python -m mergekit_from.cli``: the console script without an installed entry point."""

import sys

from mergekit_from.cli import main

sys.exit(main())
