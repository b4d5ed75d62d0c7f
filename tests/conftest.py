"""Shared pytest configuration for the memwatch suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from binding_support import Attached, Region, skip_if_unavailable


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "guest: needs the patched QEMU guest kernel (process_memwatch, "
        "CONFIG_MEM_SOFT_DIRTY); CI runs these in the guest with -m guest",
    )


# Fixtures of the binding-level tests (binding_support.py).


@pytest.fixture
def region() -> Iterator[Region]:
    r = Region(128)
    yield r
    r.close()


@pytest.fixture
def mech(request: pytest.FixtureRequest, region: Region) -> Iterator[Attached]:
    name = request.param
    skip_if_unavailable(name)
    a = Attached(name, region)
    yield a
    a.t.detach()
