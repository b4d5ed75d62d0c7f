"""``python -m memwatch``: the ``memwatch`` command (see :mod:`memwatch._cli`)."""

from __future__ import annotations

from ._cli import console_main

if __name__ == "__main__":
    console_main()
