"""``python -m wharf_broker`` (or ``python -m broker`` from a checkout)."""

import sys

from .cli import main

sys.exit(main())
