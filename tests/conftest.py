"""Shared pytest configuration for the memwatch suite."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "guest: needs the patched QEMU guest kernel (process_memwatch, "
        "CONFIG_MEM_SOFT_DIRTY); CI runs these in the guest with -m guest",
    )
