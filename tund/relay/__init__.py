"""The data path: relay worker processes, never the daemon's event loop.

* :mod:`~tund.relay.process`    the worker process: entry point, build, fork server, privileges;
* :mod:`~tund.relay.loop`       the packet loop (pump), its poller and counters;
* :mod:`~tund.relay.device`     the device end: tun/tap fd, TUNSETOFFLOAD, receive coalescing;
* :mod:`~tund.relay.transport`  the network end: UDP (with GSO/GRO), TCP, simpletun framing;
* :mod:`~tund.relay.codec`      what sits between them: plain, the offload extension, chunks;
* :mod:`~tund.relay.wireguard`  the WireGuard protocol, sans-IO.

Imports nothing from the daemon, control, supervise or ctl (a test holds it to that).
"""
