"""Helpers for the hardening tests (crash-prone cases run in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_py(code: str, timeout: float = 60, env: dict[str, str] | None = None,
           argv0: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run *code* in a fresh interpreter importing this checkout's memwatch.

    A hang is reported as rc None in the returned object's ``returncode``
    replaced by ``-9`` after the timeout (the child is killed).
    """
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("PYTHONFAULTHANDLER", None)
    if env:
        e.update(env)
    cmd = [*(argv0 or []), sys.executable, "-c", textwrap.dedent(code)]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e,
                              cwd=str(ROOT), check=False)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return subprocess.CompletedProcess(cmd, -9, out, "TIMEOUT (hang)")


def describe(r: subprocess.CompletedProcess[str]) -> str:
    return f"rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr[-3000:]}"
