"""The package's version, in a module of its own: any layer reads it without the package's ``__init__``."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
