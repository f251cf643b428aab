"""``python -m tund.relay``: one relay worker, or the fork server that forks them.

Usage (by the daemon, see :mod:`tund.supervise.forkserver`)::

    python -m tund.relay --control-fd N [--run-as UID:GID]   (one worker: .worker)
    python -m tund.relay --fork-server --control-fd N        (the zygote: .zygote)
"""

from __future__ import annotations

import argparse

from tund.relay.process import worker
from tund.workerapi.run_as import RunAs


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, then run one worker (or the zygote)."""
    parser = argparse.ArgumentParser(prog="python -m tund.relay")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--run-as", type=RunAs.parse, default=None, metavar="UID:GID")
    parser.add_argument("--fork-server", action="store_true",
                        help="fork workers on request (tund.relay.process.zygote), run none")
    args = parser.parse_args(argv)
    if args.fork_server:
        from tund.relay.process import zygote

        worker.setup_logging("fork-server", "tund-zygote")
        return zygote.serve(args.control_fd)
    return worker.run(args.control_fd, args.run_as)
