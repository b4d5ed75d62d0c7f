"""Vocabulary shared by every layer of the facade: flags and errors.

Nothing here touches the extension, so these names import on any machine.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Mapping
from typing import Any

__all__ = ["Flags", "UnsupportedError"]


class Flags(enum.IntFlag):
    """The ``flags`` argument of :func:`memwatch.process_memwatch`.

    The values are those of ``linux/memwatch.h`` (``MEMWATCH_SD_*``).
    """

    SD_GET = 0x1
    SD_CLEAR = 0x2
    SD_NO_REUSED_REGIONS = 0x4


class UnsupportedError(OSError):
    """No tracking mechanism here can do what was asked.

    Raised when ``backend="auto"`` finds no usable backend, when a named
    backend is unavailable or lacks a capability (watching another process),
    and when an operation would need a capability the chosen backend lacks
    (a partial reset with ``softdirty``, which can only clear the whole
    process: memwatch refuses rather than clear more than asked).

    It is an :class:`OSError` (``errno`` ``EOPNOTSUPP``) because the cause is
    always the running system -- kernel configuration, sysctls, privileges --
    never a bug in the caller's arguments, and because it is the same
    condition that :func:`memwatch.process_memwatch` reports as
    ``OSError(ENOSYS)`` or ``OSError(EOPNOTSUPP)`` one layer down: code that
    already handles "the OS cannot do this" with ``except OSError`` keeps
    working.  ``str(err)`` is the message alone, naming what is missing.

    Attributes:
        requirement: what was asked for, in words ("watch another process").
        reasons: backend name -> why that backend could not do it.
    """

    requirement: str
    reasons: dict[str, str]

    def __init__(
        self,
        message: str,
        *,
        requirement: str = "",
        reasons: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(errno.EOPNOTSUPP, message)
        self.requirement = requirement
        self.reasons = dict(reasons or {})

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_unsupported,
            (str(self.strerror), self.requirement, self.reasons),
        )


def _rebuild_unsupported(
    message: str, requirement: str, reasons: dict[str, str]
) -> UnsupportedError:
    return UnsupportedError(message, requirement=requirement, reasons=reasons)


UnsupportedError.__module__ = "memwatch"
Flags.__module__ = "memwatch"
