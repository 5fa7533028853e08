"""What runs inside a corral worker: the ASGI core.

This package never imports :mod:`daemon`. Importing it is cheap: the heavy
modules (uvloop, httptools, the application) load only when a worker serves.
"""

__version__ = "0.1.0"
