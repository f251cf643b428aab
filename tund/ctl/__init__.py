"""``tundctl``, the command-line client: :mod:`~tund.ctl.main` (command table, exit
codes) and :mod:`~tund.ctl.render` (presentation, apart from the transport)."""
