"""The daemon: the control plane's composition root and what it runs.

* :mod:`~tund.daemon.main`      ``tund``: arguments, signals, systemd notifications;
* :mod:`~tund.daemon.commands`  the control command table, each command with its right;
* :mod:`~tund.daemon.engine`    running state: devices, listeners, keys, tunnel runners;
* :mod:`~tund.daemon.keyfiles`  a tunnel's key material, read from its key files;
* :mod:`~tund.daemon.plan`      the pure diff of two configurations;
* :mod:`~tund.daemon.reload`    a reload as a list of steps, each with its undo;
* :mod:`~tund.daemon.status`    the status reply (schema: :mod:`tund.control.status_schema`);
* :mod:`~tund.daemon.metrics`   Prometheus exposition.

Nothing here moves packets: the data path runs in worker processes (:mod:`tund.relay`),
reached only through :mod:`tund.workerapi` and :mod:`tund.supervise`.
"""
