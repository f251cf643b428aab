"""``python -m tund`` runs the daemon."""

import sys

from tund.daemon.main import main

sys.exit(main())
