"""Static hygiene: no unused imports or names, no undefined names, anywhere in the project;
no type errors in the packages (mypy, configured in pyproject.toml's [tool.mypy])."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO

PACKAGES = ("api", "worker", "shared", "depthfleet", "tests", "bench")


def test_pyflakes_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "pyflakes", *PACKAGES], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=REPO, capture_output=True,
                          text=True)


def test_mypy_finds_no_type_errors_in_all_four_packages():
    result = mypy()
    assert result.returncode == 0, result.stdout + result.stderr
    checked = int(re.search(r"no issues found in (\d+) source files", result.stdout).group(1))
    # The import hook of a default editable install hid api/, worker/ and shared/ (10 files).
    assert checked >= 60, result.stdout


def test_mypy_follows_depthfleet_api_to_api_and_reports_a_type_error(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from depthfleet.api.ingest import parse_options\n"
                     "from depthfleet.shared.settings import Settings\n\n"
                     "Settings(max_pixels='many')\n"
                     "parse_options(None)\n")
    result = mypy(str(probe))
    assert result.returncode == 1 and "import-not-found" not in result.stdout, result.stdout
    assert 'probe.py:4: error: Argument "max_pixels" to "Settings" has incompatible type ' \
           '"str"; expected "int"  [arg-type]' in result.stdout
