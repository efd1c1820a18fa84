"""``python -m shale``: the command line."""

import sys

from shale.cli import main

sys.exit(main())
