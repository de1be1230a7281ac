"""``python -m coda_bridge`` is the ``coda-bridge`` command."""

from .cli.main import main

main()
