"""``python -m tund.relay --control-fd N``: one relay worker (see :mod:`tund.relay.spec`)."""

from tund.relay.main import main

raise SystemExit(main())
