"""Photo -> depth, as the official MiDaS v2.1 small pipeline computes it, on any backend.

Official steps (``run.py`` with hub's ``small_transform``): RGB / 255, keep-aspect cubic resize
to fit 256x256 with sides multiple of 32, ImageNet normalization, CHW; forward; bicubic
upsampling to the photo's size. Every step here matches it within 2e-6 of the output range
(tests compare with reference outputs at 1e-4; semantic slips land at 1e-2 or worse).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from depthfleet.shared.depth import output_size, upsample
from depthfleet.shared.model.backends import (NcnnBackend, OnnxRuntimeBackend, OpenVinoBackend,
                                              TorchBackend)
from depthfleet.shared.model.ncnn_export import NcnnModel, ncnn_model
from depthfleet.shared.model.onnx_export import exported_onnx, exported_path, ort_optimized
from depthfleet.shared.model.weights import ResolvedWeights, resolve_weights
from depthfleet.shared.settings import Settings
from depthfleet.shared.storage import Storage, open_storage

NETWORK_SIDE = 256
MULTIPLE = 32
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SCALE, OFFSET = 1 / (255 * STD), MEAN / STD  # (x / 255 - mean) / std == x * SCALE - OFFSET
CUBIC_A = np.float32(-0.75)  # OpenCV's INTER_CUBIC kernel (torch's bicubic uses the same)
EXACT_BACKENDS = ("onnxruntime", "ncnn", "torch")  # fp32, within 2e-6 of the official outputs


class Backend(Protocol):
    """Runs the network: normalized (1, 3, h, w) float32 -> (h, w) float32 inverse depth."""

    name: str
    weights_sha256: str  # which checkpoint: results from different weights must not mix

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Prediction:
    """One photo's arrays, named like the parity fixtures' ``.npz`` files."""

    input: np.ndarray  # (1, 3, h, w) float32, what the network saw
    net_output: np.ndarray  # (h, w) float32
    depth: np.ndarray  # (H, W) float32, relative inverse depth at the output size


class DepthEstimator:
    """The whole pipeline around one backend.

    ``draft_decode`` (opt-in, inexact) lets callers decode big JPEGs at reduced DCT scale:
    the network sees 256 px, so 12 MP of exact pixels are mostly decoded for nothing.
    """

    def __init__(self, backend: Backend, draft_decode: bool = False) -> None:
        self.backend = backend
        self.draft_decode = draft_decode

    @property
    def exact(self) -> bool:
        """Whether results match the official pipeline (parity), so may mix with reference ones."""
        return self.backend.name in EXACT_BACKENDS and not self.draft_decode

    def predict(self, rgb: np.ndarray, max_side: int | None = None,
                photo_size: tuple[int, int] | None = None) -> Prediction:
        """Depth for an (H, W, 3) uint8 RGB photo, at its size or capped to ``max_side``.

        ``photo_size`` (H, W) is the photo's own size when ``rgb`` was decoded smaller.
        """
        x = prepare_input(rgb)
        net_output = self.backend(x)
        height, width = photo_size or rgb.shape[:2]
        return Prediction(x, net_output, upsample(net_output, output_size(height, width, max_side)))

    def predict_raw(self, rgb: np.ndarray) -> np.ndarray:
        """The network's (h, w) float32 output for an (H, W, 3) uint8 RGB photo, before
        upsampling: what ``RawDepth`` keeps."""
        return self.backend(prepare_input(rgb))


@dataclass(frozen=True)
class ModelFiles:
    """What a machine needs on disk before a process can build its backend."""

    weights: ResolvedWeights
    onnx: Path | None  # the exported model, portable (OpenVINO reads it)
    ort_model: Path | None = None  # the same, as ONNX Runtime optimized it for this CPU
    ncnn: NcnnModel | None = None  # the same, converted for ncnn


def prepare_model_files(settings: Settings) -> ModelFiles:
    """Fetch and verify the weights, export (and convert) the model if needed, without torch
    in this process; the export comes from the fleet's storage when another machine made it.

    The slow, once-per-machine part of ``load_backend``: a parent process runs it before
    forking workers, whose ``load_backend`` then only finds the files in the cache.
    """
    weights = resolve_weights(settings)
    if settings.backend == "torch" and settings.precision == "fp32":
        return ModelFiles(weights, None)
    cached = exported_path(weights, settings.cache_dir).is_file()  # then no storage client
    onnx = exported_onnx(weights, settings.cache_dir, None if cached else shared_models(settings))
    if settings.precision == "bf16":
        return ModelFiles(weights, onnx)
    if settings.backend == "ncnn":
        return ModelFiles(weights, onnx, ncnn=ncnn_model(onnx))
    return ModelFiles(weights, onnx, ort_model=ort_optimized(onnx))


def shared_models(settings: Settings) -> Storage | None:
    """Where the fleet shares its exported model (``model.published``): its storage, if any."""
    return open_storage(settings) if settings.storage_url else None


def load_backend(settings: Settings, threads: int, callers: int = 1) -> Backend:
    """The configured backend on the verified weights.

    Each call runs on ``threads`` (>= 1) threads; ``callers`` threads may call at once.
    ``DEPTHFLEET_PRECISION=bf16`` selects OpenVINO bf16 whatever the backend setting.
    """
    files = prepare_model_files(settings)
    sha256 = files.weights.sha256
    if settings.precision == "bf16" and files.onnx:
        return OpenVinoBackend(files.onnx, threads, sha256, callers)
    if files.ncnn:
        return NcnnBackend(files.ncnn.param, files.ncnn.weights, threads, sha256)
    if files.ort_model:
        return OnnxRuntimeBackend(files.ort_model, threads, sha256)
    return TorchBackend(files.weights.path, threads, sha256)


def network_size(width: int, height: int) -> tuple[int, int]:
    """(w, h) of the network input: the official "upper_bound" keep-aspect fit into 256x256.

    Both sides are scaled by the same factor, then rounded to the nearest multiple of 32, half
    to even like the official ``np.round`` (1920x1080 gives 256x128, not 256x160). The official
    "round down if above 256" never applies: a side scaled to at most 256 cannot round above it.
    Deviation: each side is at least 32; the official code computes 0 for very elongated
    photos (4000x40) and crashes in the resize.
    """
    scale = min(NETWORK_SIDE / width, NETWORK_SIDE / height)
    return _nearest_multiple(width * scale), _nearest_multiple(height * scale)


def _nearest_multiple(side: float) -> int:
    return max(MULTIPLE, round(side / MULTIPLE) * MULTIPLE)  # round(): half to even


def prepare_input(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> normalized (1, 3, h, w) float32 network input."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    size = network_size(rgb.shape[1], rgb.shape[0])
    x = resize_cubic(rgb, size)
    x = x * SCALE - OFFSET
    return np.ascontiguousarray(x.transpose(2, 0, 1))[None]


def resize_cubic(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(rgb.astype(float32), size, INTER_CUBIC)`` converting only the rows it reads.

    The official path turns the whole photo into floats first: 12 MP of them cost more than
    the network. Cubic interpolation without antialiasing reads 4 source rows per output row,
    so we gather those rows (uint8), convert them, let OpenCV resize them horizontally, and
    blend each group of 4 with OpenCV's own vertical weights. 12 MP -> 256x192: 8 ms instead
    of 20 ms (float32 first) or 49 ms (official float64); within 3e-7 of the official result.
    """
    width, height = size
    rows, weights = _cubic_taps(rgb.shape[0], height)  # (4, height) each
    floats = rgb.take(rows.ravel(), axis=0).astype(np.float32)
    # A vertical scale of exactly 1 makes OpenCV's vertical pass an exact identity.
    gathered = cv2.resize(floats, (width, 4 * height), interpolation=cv2.INTER_CUBIC)
    return np.einsum("ihwc,ih->hwc", gathered.reshape(4, height, width, 3), weights)


def _cubic_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, each (4, dst), of OpenCV's INTER_CUBIC along one axis.

    Same arithmetic as OpenCV: float32 source coordinates (i + 0.5) * src / dst - 0.5, the
    Keys kernel with a = -0.75, the 4th weight as 1 minus the others, borders replicated.
    """
    position = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    start = np.floor(position)
    t = position - start
    a = CUBIC_A
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    weights = np.stack([w0, w1, w2, 1 - w0 - w1 - w2])
    indices = np.clip(start.astype(np.intp) + np.arange(-1, 3)[:, None], 0, src - 1)
    return indices, weights
