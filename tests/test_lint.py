"""Static hygiene: no unused imports or names, no undefined names, anywhere in the project."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PACKAGES = ("api", "worker", "shared", "depthfleet", "tests", "bench")


def test_pyflakes_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "pyflakes", *PACKAGES], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
