"""The packet loop: ``pump`` (device <-> codec <-> transport on one epoll), ``poller``
(that epoll) and ``counters`` (what the worker reports)."""
