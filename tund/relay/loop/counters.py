"""The worker's cumulative counters (the base of STATS; see :mod:`tund.workerapi.spec`)."""

from __future__ import annotations

import time
from typing import Any


class Counters:
    """Plain mutable counters, shared by the pump and the transports of one worker.

    ``rx_*`` count packets written to the device (peer -> device), ``tx_*`` packets read
    from the device and handed on towards the peer. ``drops`` maps a cause to a count;
    ``errors`` counts failed system calls that were not fatal (ICMP errors on UDP sends,
    device writes the kernel refused, ...). ``last_rx`` / ``last_tx`` are
    ``time.monotonic()`` times (the loop has that clock at hand; no wall-clock call per
    turn); :meth:`as_dict` gives them as unix times.
    """

    __slots__ = ("drops", "errors", "last_rx", "last_tx", "rx_bytes", "rx_packets",
                 "tx_bytes", "tx_packets")

    def __init__(self) -> None:
        self.rx_packets = 0
        self.rx_bytes = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.drops: dict[str, int] = {}
        self.errors = 0
        self.last_rx: float | None = None
        self.last_tx: float | None = None

    def drop(self, cause: str, n: int = 1) -> None:
        self.drops[cause] = self.drops.get(cause, 0) + n

    def as_dict(self) -> dict[str, Any]:
        offset = time.time() - time.monotonic()  # monotonic -> unix time, as of now
        return {
            "rx_packets": self.rx_packets,
            "rx_bytes": self.rx_bytes,
            "tx_packets": self.tx_packets,
            "tx_bytes": self.tx_bytes,
            "drops": dict(self.drops),
            "errors": self.errors,
            "last_rx": None if self.last_rx is None else self.last_rx + offset,
            "last_tx": None if self.last_tx is None else self.last_tx + offset,
        }
