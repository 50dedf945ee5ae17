"""``python -m astromix.cli``: the same as the ``astromix`` command."""

import sys

from . import main

sys.exit(main())
