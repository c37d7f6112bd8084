"""``python -m trioserve APP [options]``."""

import sys

from .cli import main

sys.exit(main())
