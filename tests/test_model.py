"""The model, strict checkpoint loading and the photo -> depth pipeline.

Parity: the official MiDaS pipeline's outputs for three photos (``PARITY_DIR``, seed-1234
stand-in weights) must be reproduced within 1e-4 of each array's range, through both
backends. Faithful fp32 implementations land within 2e-6; every semantic slip (bilinear,
wrong align_corners, other input resize, BGR) at 1e-2 or worse.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import MIDAS_REF, PARITY_DIR
from depthfleet.shared.errors import WeightsError
from depthfleet.shared.model.midas_small import (
    build_midas_small,
    load_checkpoint,
    official_shapes,
)
from depthfleet.shared.model.onnx_export import EXPORT_VERSION
from depthfleet.shared.pipeline import (
    Backend,
    DepthEstimator,
    load_backend,
    network_size,
    output_size,
    resize_cubic,
)
from depthfleet.shared.settings import Settings

FIXTURES = ("astronaut", "coffee", "chelsea")
BACKENDS = ("torch", "onnxruntime")
TOLERANCE = 1e-4  # of the reference array's range


@pytest.fixture(scope="module")
def settings(checkpoint_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(weights=str(checkpoint_path), cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def backends(settings: Settings) -> dict[str, Backend]:
    return {name: load_backend(settings.with_(backend=name), threads=2) for name in BACKENDS}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_midas_small()


@pytest.fixture(scope="module")
def official_state_dict(checkpoint_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint_path, weights_only=True)


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max() / (ref.max() - ref.min()))


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", FIXTURES)
def test_parity_with_official_pipeline(backends: dict[str, Backend], backend_name: str, name: str):
    reference = np.load(PARITY_DIR / f"{name}.npz")
    prediction = DepthEstimator(backends[backend_name]).predict(read_rgb(PARITY_DIR / f"{name}.png"))
    for array in ("input", "net_output", "depth"):
        assert relative_error(getattr(prediction, array), reference[array]) <= TOLERANCE, array


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_backend_names_its_weights(backends: dict[str, Backend], backend_name: str, checkpoint_sha256):
    assert backends[backend_name].name == backend_name
    assert backends[backend_name].weights_sha256 == checkpoint_sha256


def test_depth_capped_to_max_side(backends: dict[str, Backend]) -> None:
    rgb = read_rgb(PARITY_DIR / "coffee.png")  # 400x600
    prediction = DepthEstimator(backends["onnxruntime"]).predict(rgb, max_side=300)
    assert prediction.depth.shape == (200, 300)
    assert prediction.depth.dtype == np.float32


LOAD_ONNXRUNTIME_BACKEND = """
import sys
from pathlib import Path
from depthfleet.shared.pipeline import load_backend
from depthfleet.shared.settings import Settings
load_backend(Settings(weights=sys.argv[1], cache_dir=Path(sys.argv[2])), threads=1)
assert "torch" not in sys.modules, "torch was imported"
"""


def test_onnxruntime_worker_never_imports_torch(settings: Settings) -> None:
    """With the ONNX model cached (by the ``backends`` fixture), loading needs no torch."""
    command = [sys.executable, "-c", LOAD_ONNXRUNTIME_BACKEND, settings.weights, str(settings.cache_dir)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_exported_graph_pads_inside_its_convs(backends: dict[str, Backend],
                                              settings: Settings) -> None:
    """The export (cached by ``backends``) has no Pad node: SAME padding is the convs' own."""
    import onnx

    (exported,) = (settings.cache_dir / "onnx").glob(f"midas_small-*-v{EXPORT_VERSION}.onnx")
    graph = onnx.load(str(exported)).graph
    auto_pads = [a.s for n in graph.node if n.op_type == "Conv" for a in n.attribute
                 if a.name == "auto_pad"]
    assert not [n for n in graph.node if n.op_type == "Pad"]
    assert auto_pads == [b"SAME_UPPER"] * 5  # the stem and four stride-2 depthwise convs


def test_projecting_before_upsampling_is_the_same_function(checkpoint_path: Path) -> None:
    """The export's order in the fusion blocks (``project_first``) changes only rounding."""
    model = build_midas_small(checkpoint_path)
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 3, 192, 256),
                                                                  dtype=np.float32))
    with torch.inference_mode():
        official = model(x).numpy()
        for block in model.fusion:
            block.project_first = True
        swapped = model(x).numpy()
    assert 0 < relative_error(swapped, official) < 1e-5


def test_model_keys_are_exactly_the_official_ones(model: torch.nn.Module) -> None:
    manifest = json.loads((MIDAS_REF / "midas_v21_small_256.keys.json").read_text())
    official = {key: tuple(shape) for key, shape, _ in manifest}
    assert {k: tuple(s) for k, s in official_shapes(model).items()} == official
    assert len(official) == 482


def save(state_dict: dict, path: Path) -> Path:
    torch.save(state_dict, path)
    return path


def test_wrapped_checkpoint_loads(model, official_state_dict, tmp_path: Path) -> None:
    load_checkpoint(model, save({"model": official_state_dict, "optimizer": {}}, tmp_path / "w.pt"))
    assert torch.equal(model.head.conv3.weight, official_state_dict["scratch.output_conv.4.weight"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda sd: sd.pop("scratch.output_conv.4.bias"),
            "1 missing key(s): scratch.output_conv.4.bias",
        ),
        (
            lambda sd: sd.pop("scratch.refinenet4.resConfUnit1.conv1.weight"),
            "missing key(s): scratch.refinenet4.resConfUnit1.conv1.weight",
        ),
        (
            lambda sd: sd.update({"scratch.extra.weight": torch.zeros(1)}),
            "1 unexpected key(s): scratch.extra.weight",
        ),
        (
            lambda sd: sd.update({"scratch.output_conv.4.bias": torch.zeros(2)}),
            "1 misshaped key(s): scratch.output_conv.4.bias (expected (1,), got (2,))",
        ),
    ],
    ids=["missing", "missing-unused", "unexpected", "misshaped"],
)
def test_strict_load_names_the_bad_key(model, official_state_dict, tmp_path: Path, change, message):
    state_dict = dict(official_state_dict)
    change(state_dict)
    with pytest.raises(WeightsError, match="not a MiDaS v2.1 small checkpoint") as error:
        load_checkpoint(model, save(state_dict, tmp_path / "bad.pt"))
    assert message in str(error.value)


def test_truncated_checkpoint_is_refused(model, checkpoint_path: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint_path.read_bytes()[: checkpoint_path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(model, truncated)


@pytest.mark.parametrize("content", [b"<html>Not Found</html>", b""], ids=["html", "empty"])
def test_non_checkpoint_file_is_refused(model, tmp_path: Path, content: bytes) -> None:
    (tmp_path / "page.pt").write_bytes(content)
    with pytest.raises(WeightsError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(model, tmp_path / "page.pt")


def test_checkpoint_of_something_else_is_refused(model, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="holds a list, not a state_dict"):
        load_checkpoint(model, save([1, 2, 3], tmp_path / "list.pt"))


@pytest.mark.parametrize(
    ("photo", "network"),
    [
        ((512, 512), (256, 256)),
        ((600, 400), (256, 160)),
        ((451, 300), (256, 160)),
        ((4032, 3024), (256, 192)),
        ((3024, 4032), (192, 256)),
        ((1920, 1080), (256, 128)),  # 144 / 32 = 4.5 rounds half to even, like np.round
        ((100, 50), (256, 128)),  # small photos are scaled up
        ((4000, 40), (256, 32)),  # the official code computes 0 here and crashes
        ((40, 4000), (32, 256)),
        ((1, 1), (256, 256)),
    ],
)
def test_network_size(photo: tuple[int, int], network: tuple[int, int]) -> None:
    assert network_size(*photo) == network


@pytest.mark.parametrize(
    ("photo_hw", "size_wh"),
    [((3024, 4032), (256, 192)), ((512, 512), (256, 256)), ((300, 451), (256, 160)),
     ((40, 4000), (256, 32)), ((1, 1), (256, 256)), ((7, 3), (96, 256))],
)
def test_resize_cubic_matches_opencv_on_the_whole_image(photo_hw, size_wh) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (*photo_hw, 3), dtype=np.uint8)
    official = cv2.resize(rgb / 255.0, size_wh, interpolation=cv2.INTER_CUBIC)
    assert np.abs(resize_cubic(rgb, size_wh) / 255 - official).max() < 1e-6


@pytest.mark.parametrize(
    ("photo_hw", "max_side", "expected"),
    [((400, 600), None, (400, 600)), ((400, 600), 600, (400, 600)), ((400, 600), 300, (200, 300)),
     ((3024, 4032), 1000, (750, 1000)), ((4000, 40), 100, (100, 1))],
)
def test_output_size(photo_hw, max_side, expected) -> None:
    assert output_size(*photo_hw, max_side) == expected
