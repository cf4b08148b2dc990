"""``python -m amavisd``: the same as the ``amavisd`` console script."""

import sys

from amavisd.cli import main

sys.exit(main())
