"""``tundctl``, the command-line client: :mod:`~tund.ctl.main` (command table, exit
codes) and :mod:`~tund.ctl.render` (presentation, apart from the transport; status, peers and
dump in :mod:`~tund.ctl.status_view`, :mod:`~tund.ctl.peer_view`, :mod:`~tund.ctl.dump`)."""
