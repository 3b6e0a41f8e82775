"""``python -m trio_echo``: the same as the ``trio-echo`` command."""

import signal
import sys

if any(arg.startswith("--worker-of") for arg in sys.argv):
    # A --workers worker (started this way by the supervisor, with SIGINT
    # blocked): a SIGINT forwarded before trio's handler is installed ends it
    # quietly by the default action -- a stop, to the supervisor -- rather
    # than with a KeyboardInterrupt traceback in the middle of an import.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

# After the signal set-up above.
from ._cli import main

sys.exit(main())
