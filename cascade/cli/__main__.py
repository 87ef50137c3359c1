"""``python -m cascade.cli``: the ``cascade`` command."""

import sys

from cascade.cli.entry import main

sys.exit(main())
