"""``python -m tund.relay --control-fd N``: one relay worker (see :mod:`tund.workerapi.spec`)."""

from tund.relay.process.main import main

raise SystemExit(main())
