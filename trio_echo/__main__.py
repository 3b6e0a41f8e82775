"""``python -m trio_echo``: the same as the ``trio-echo`` command."""

import sys

from ._cli import main

sys.exit(main())
