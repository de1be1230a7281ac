"""``python -m coda_bridge`` is the ``coda-bridge`` command."""

from .cli import main

main()
