"""tund: a supervised TUN/TAP tunnel daemon.

Layout (control plane apart from the data path):

* control plane, in the daemon process: ``config`` (TOML -> validated models),
  ``plan`` (pure reload diff), ``netdev`` (kernel objects: devices by ioctl,
  everything else by ``ip``), ``supervise`` (one worker process per tunnel),
  ``control`` (Unix socket API), ``daemon`` (composition root);
* data path, only in worker processes: ``relay`` (device, transport, framing,
  crypto, the packet pump).
"""

__version__ = "0.1.0"
