"""``python -m k3stw.cli``: the ``k3s`` command."""

import sys

from k3stw.cli import main

sys.exit(main())
