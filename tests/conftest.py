"""Shared test fixtures: reference data paths and deterministic stand-in checkpoints.

The official MiDaS weights cannot be downloaded in CI, so checkpoints are generated at test
time with ``shared/midas/detweights.py`` (seed 1234 reproduces the parity fixtures).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared"
MIDAS_REF = REFERENCE / "midas"
PARITY_DIR = MIDAS_REF / "parity"
PHOTOS_DIR = REFERENCE / "testdata" / "photos"
BAD_DIR = REFERENCE / "testdata" / "bad"
PARITY_SEED = 1234


def make_checkpoint(out: Path, seed: int = PARITY_SEED) -> Path:
    """Write detweights' checkpoint for ``seed`` to ``out`` (a bare state_dict, like the release file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, str(MIDAS_REF / "detweights.py"),
         str(MIDAS_REF / "midas_v21_small_256.keys.json"), str(seed), str(out)],
        check=True, capture_output=True,
    )
    return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(folder: Path) -> list[dict]:
    return json.loads((folder / "manifest.json").read_text())["files"]


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed-1234 stand-in checkpoint the parity fixtures were computed with."""
    return make_checkpoint(tmp_path_factory.mktemp("weights") / "midas_v21_small_256.pt")


@pytest.fixture(scope="session")
def checkpoint_sha256(checkpoint_path: Path) -> str:
    return sha256_of(checkpoint_path)


@pytest.fixture(scope="session")
def photos_manifest() -> list[dict]:
    return load_manifest(PHOTOS_DIR)


@pytest.fixture(scope="session")
def bad_manifest() -> list[dict]:
    return load_manifest(BAD_DIR)
