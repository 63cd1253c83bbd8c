"""Running Triton kernels in Triton's CPU interpreter, in a child process (``TRITON_INTERPRET`` is read
when a kernel is defined, at import)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aoti.kernels import gemv

ROOT = Path(__file__).resolve().parents[1]
needs_triton = pytest.mark.skipif(not gemv.available(), reason="Triton is not installed")


def run_interpreted(code: str, *args: str) -> str:
    """Run ``code`` with the interpreter on; its stdout (the test fails with its stderr if it fails)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()
