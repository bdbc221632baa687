"""The ncnn backend (``DEPTHFLEET_BACKEND=ncnn``): exact, fp32, converted once, refused loudly.

Parity on the official fixtures through the backend and through ``depthfleet predict``; every
network shape against ONNX Runtime; fp32 options with a bf16 control that proves the parity
check would catch a slip; the conversion cache (reused, damage converted again); a clear error
when pnnx fails, and a real worker that refuses to start on it; no torch in the process.

About 40 s on 2 cores (2 min when other work loads them): the module's ONNX export and
conversion, three more conversions, one ``depthfleet predict`` and one ``depthfleet worker``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PARITY_DIR
from depthfleet.shared.errors import WeightsError
from depthfleet.shared.imaging.encode import decode_pfm
from depthfleet.shared.model.backends import NcnnBackend, fp32_options
from depthfleet.shared.model.ncnn_export import NcnnModel, ncnn_model
from depthfleet.shared.pipeline import (MULTIPLE, NETWORK_SIDE, Backend, DepthEstimator,
                                        load_backend, prepare_model_files)
from depthfleet.shared.settings import Settings
from support import system_env
from test_cli import depthfleet
from test_model import FIXTURES, TOLERANCE, read_rgb, relative_error

# Option names that trade fp32 away, as ncnn 1.0.20261020 spells them: all must be off.
KNOWN_REDUCED = {"use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                 "use_bf16_packed", "use_bf16_storage", "use_int8_inference",
                 "use_int8_packed", "use_int8_storage", "use_int8_arithmetic"}
SIDES = range(MULTIPLE, NETWORK_SIDE + 1, MULTIPLE)
NETWORK_SHAPES = sorted({*((NETWORK_SIDE, s) for s in SIDES), *((s, NETWORK_SIDE) for s in SIDES)})


@pytest.fixture(scope="module")
def settings(checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(weights=str(checkpoint_path), cache_dir=tmp_path_factory.mktemp("cache"),
                    backend="ncnn")


@pytest.fixture(scope="module")
def backend(settings: Settings) -> Backend:
    return load_backend(settings, threads=1)


@pytest.fixture(scope="module")
def onnxruntime_backend(settings: Settings) -> Backend:
    return load_backend(settings.with_(backend="onnxruntime"), threads=1)


@pytest.fixture(scope="module")
def model(settings: Settings, backend: Backend) -> NcnnModel:
    """The cache entry ``backend`` was built from."""
    files = prepare_model_files(settings)
    assert files.ncnn is not None
    return files.ncnn


@pytest.fixture()
def exported_copy(settings: Settings, backend: Backend, tmp_path: Path) -> Path:
    """A new cache holding only the exported ONNX model (copied: no export in the test)."""
    exported = prepare_model_files(settings).onnx
    assert exported is not None
    copy = tmp_path / "cache" / "onnx" / exported.name
    copy.parent.mkdir(parents=True)
    shutil.copyfile(exported, copy)
    return copy


@pytest.fixture()
def converted_copy(exported_copy: Path, model: NcnnModel) -> Path:
    """``exported_copy``'s cache with the module's ncnn entry copied in too: no ORT model."""
    for path in (model.param, model.weights, model.manifest):
        shutil.copyfile(path, exported_copy.parent / path.name)
    return exported_copy


def fixture_net_output(name: str) -> tuple[np.ndarray, np.ndarray]:
    reference = np.load(PARITY_DIR / f"{name}.npz")
    return reference["input"], reference["net_output"]


@pytest.mark.parametrize("name", FIXTURES)
def test_parity_with_official_pipeline(backend: Backend, name: str) -> None:
    x, net_output = fixture_net_output(name)
    assert relative_error(backend(x), net_output) <= TOLERANCE
    reference = np.load(PARITY_DIR / f"{name}.npz")
    prediction = DepthEstimator(backend).predict(read_rgb(PARITY_DIR / f"{name}.png"))
    assert relative_error(prediction.depth, reference["depth"]) <= TOLERANCE
    assert DepthEstimator(backend).exact


def test_predict_with_ncnn_reproduces_the_parity_fixtures(settings: Settings,
                                                          converted_copy: Path,
                                                          tmp_path: Path) -> None:
    cache = converted_copy.parents[1]
    env = system_env("", "", None, Path(settings.weights), cache, DEPTHFLEET_BACKEND="ncnn")
    photos = [str(PARITY_DIR / f"{name}.png") for name in FIXTURES]
    result = depthfleet("predict", *photos, "--out", str(tmp_path / "out"), env=env)
    assert result.returncode == 0, result.stderr
    for name in FIXTURES:
        ours = decode_pfm((tmp_path / "out" / f"{name}.depth.pfm").read_bytes())
        assert relative_error(ours, np.load(PARITY_DIR / f"{name}.npz")["depth"]) <= TOLERANCE
    assert not list(cache.glob("onnx/*-ort*"))  # ONNX Runtime would have optimized a model


@pytest.mark.parametrize(("height", "width"), NETWORK_SHAPES)
def test_every_network_shape_matches_onnxruntime(backend: Backend, onnxruntime_backend: Backend,
                                                 height: int, width: int) -> None:
    x = np.random.default_rng(height * width).standard_normal((1, 3, height, width),
                                                               dtype=np.float32)
    assert relative_error(backend(x), onnxruntime_backend(x)) <= TOLERANCE


def test_runs_fp32_with_winograd_on_one_thread(backend: NcnnBackend) -> None:
    options = backend.options
    reduced = {name for name in dir(options)
               if any(kind in name for kind in ("fp16", "bf16", "int8"))}
    assert KNOWN_REDUCED <= reduced  # the check below looks at real options
    assert {name for name in reduced if getattr(options, name)} == set()
    assert options.use_winograd_convolution and options.num_threads == 1


def test_bf16_storage_would_fail_parity(model: NcnnModel) -> None:
    """The control: one reduced-precision option on lands far beyond the tolerance."""
    options = fp32_options(threads=1)
    options.use_bf16_storage = True
    slipped = NcnnBackend(model.param, model.weights, 1, "", options)
    x, net_output = fixture_net_output("coffee")
    assert relative_error(slipped(x), net_output) > 1e-3


def test_cache_is_reused_and_damage_is_converted_again(converted_copy: Path) -> None:
    converted = NcnnModel.of(converted_copy)
    first = {path: path.stat().st_ino for path in (converted.param, converted.weights,
                                                   converted.manifest)}
    assert ncnn_model(converted_copy) == converted
    assert {path: path.stat().st_ino for path in first} == first  # nothing converted again

    with converted.weights.open("r+b") as fh:  # one weight byte flipped, same size
        fh.seek(converted.weights.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x40]))
    assert not converted.is_intact()
    ncnn_model(converted_copy)
    assert converted.weights.stat().st_ino != first[converted.weights]
    rebuilt = NcnnBackend(converted.param, converted.weights, 1, "")
    x, net_output = fixture_net_output("coffee")
    assert converted.is_intact() and relative_error(rebuilt(x), net_output) <= TOLERANCE

    converted.manifest.unlink()  # as if a conversion died before publishing its manifest
    ncnn_model(converted_copy)
    assert converted.is_intact()


def test_a_corrupt_onnx_file_fails_conversion_naming_pnnx(exported_copy: Path) -> None:
    exported_copy.write_bytes(exported_copy.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="ncnn conversion of .* failed") as failure:
        ncnn_model(exported_copy)
    assert "pnnx failed" in str(failure.value) and "read_proto_from_binary" in str(failure.value)
    assert not list(exported_copy.parent.glob("*.ncnn.*"))  # no entry, no leftovers
    assert not list(exported_copy.parent.glob(".pnnx-*"))


def test_a_worker_that_cannot_convert_refuses_to_start(exported_copy: Path, settings: Settings,
                                                       redis_db_url: str, tmp_path: Path) -> None:
    exported_copy.write_bytes(b"not an onnx model")
    env = system_env(redis_db_url, f"file://{tmp_path / 'storage'}", None, Path(settings.weights),
                     exported_copy.parents[1], DEPTHFLEET_BACKEND="ncnn",
                     DEPTHFLEET_METRICS_PORT="0")
    worker = depthfleet("worker", "--concurrency", "1", "--threads", "1", env=env, timeout=120)
    assert worker.returncode != 0
    assert "worker refuses to start" in worker.stderr and "DEPTHFLEET_BACKEND=ncnn" in worker.stderr
    assert "pnnx failed" in worker.stderr
    assert not re.search(r"@\S+ ready\.", worker.stderr)  # Celery's line once it consumes


LOAD_NCNN_BACKEND = """
import sys
from pathlib import Path
import numpy as np
from depthfleet.shared.pipeline import load_backend
from depthfleet.shared.settings import Settings
backend = load_backend(Settings(weights=sys.argv[1], cache_dir=Path(sys.argv[2]), backend="ncnn"),
                       threads=1)
assert backend.name == "ncnn" and backend(np.zeros((1, 3, 64, 96), np.float32)).shape == (64, 96)
imported = sorted({"torch", "pnnx"} & set(sys.modules))
assert not imported, f"imported {imported}"
"""


def test_converting_and_running_ncnn_imports_no_torch(settings: Settings,
                                                      exported_copy: Path) -> None:
    """From an ONNX-only cache: the conversion, the checks and the forward, all without torch."""
    command = [sys.executable, "-c", LOAD_NCNN_BACKEND, settings.weights,
               str(exported_copy.parents[1])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert NcnnModel.of(exported_copy).is_intact()
