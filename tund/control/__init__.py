"""The control plane's Unix-socket API (daemon side and client side).

* :mod:`~tund.control.protocol` NDJSON codec, ``PROTOCOL_VERSION``, error codes (pure);
* :mod:`~tund.control.server`   ``ControlServer(path, dispatch, group=...)``: socket
  set-up and connection handling; knows nothing of what commands do;
* :mod:`~tund.control.client`   ``call(path, cmd, args)``, ``DaemonUnreachable``;
* :mod:`~tests.control_support`  ``ServerThread``: a live server for tests.

The command handlers (what ``status`` or ``reload`` do) belong to the daemon, which
passes them in as ``dispatch``.
"""
