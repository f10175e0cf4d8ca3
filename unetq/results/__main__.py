"""``python -m unetq.results``: see :mod:`unetq.results`."""

import sys

from . import main

sys.exit(main())
