"""The contract between the daemon and its relay workers, imported by both sides.

* :mod:`~tund.workerapi.spec`      ``WorkerSpec``: everything one worker needs;
* :mod:`~tund.workerapi.messages`  every control message, one frozen dataclass each;
* :mod:`~tund.workerapi.run_as`    who a worker runs as (``RunAs``);
* :mod:`~tund.workerapi.underlay`  the underlay sockets the daemon binds for a worker.

This is the only relay-side code the daemon imports; it imports nothing else of tund's
but :mod:`tund.errors`.
"""
