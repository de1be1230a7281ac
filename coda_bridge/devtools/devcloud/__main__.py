"""``python -m coda_bridge.devtools.devcloud``: run or drive the local cloud simulator."""

from __future__ import annotations

from .cli import devcloud

if __name__ == "__main__":
    devcloud(prog_name="python -m coda_bridge.devtools.devcloud")
