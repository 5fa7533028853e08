"""What runs inside a corral worker: the ASGI core.

This package never imports :mod:`daemon`. Importing it is cheap: the heavy
modules (uvloop, httptools, the protocols) load when :func:`server_core.worker.warm`
asks (a master, before it forks) or a worker serves; the application, in the worker.
"""

__version__ = "0.1.0"
