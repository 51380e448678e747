"""conveyor: raw data to production traffic in one codebase.

Data flows through the stage packages in this order:
``conveyor.ingest`` -> ``conveyor.trainer`` -> model repository ->
``conveyor.engine`` -> metrics, with fused ops in ``conveyor.kernels`` and the
compiled ones in ``conveyor._C``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("conveyor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
