"""``python -m tund`` runs the daemon."""

import sys

from tund.daemon import main

sys.exit(main())
