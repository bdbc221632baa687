"""Model-only forward time of one backend, and its error against the parity fixtures.

Runs in a process of its own per backend, so torch never shares a process with ONNX Runtime
or OpenVINO and each starts cold the way a worker does:

    python -m bench.model --variant onnxruntime --weights CKPT --cache DIR   (one JSON line)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from depthfleet.shared.pipeline import DepthEstimator, load_backend
from depthfleet.shared.settings import Settings

PARITY = Path(__file__).resolve().parents[2] / "shared" / "midas" / "parity"
FIXTURES = ("astronaut", "coffee", "chelsea")
SIDE = 256
WARMUP, RUNS = 3, 15  # best of RUNS is what compares: interference only adds
# What each benchmarked name means in settings; bf16 runs on OpenVINO whatever the backend.
VARIANTS = {
    "torch": {"backend": "torch"},
    "onnxruntime": {"backend": "onnxruntime"},
    "openvino-bf16": {"backend": "onnxruntime", "precision": "bf16"},
    "ncnn": {"backend": "ncnn"},  # exact fp32, Winograd 3x3 convolutions
}
WINOGRAD = ("ncnn",)  # fewer multiplications: not bound by the direct-convolution ceiling


def forward_ms(backend: object, threads: int) -> dict[str, float]:
    """Median and best of ``RUNS`` forwards at 256x256 after ``WARMUP``."""
    x = np.random.default_rng(0).standard_normal((1, 3, SIDE, SIDE), dtype=np.float32)
    for _ in range(WARMUP):
        backend(x)
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        backend(x)
        timings.append((time.perf_counter() - started) * 1000)
    return {"median_ms": statistics.median(timings), "best_ms": min(timings)}


def parity_error(backend: object) -> dict[str, float]:
    """Worst ``max|ours - ref| / range`` over the fixtures, per array (as tests/test_model.py)."""
    estimator = DepthEstimator(backend)
    worst = {"net_output": 0.0, "depth": 0.0}
    for name in FIXTURES:
        reference = np.load(PARITY / f"{name}.npz")
        rgb = cv2.cvtColor(cv2.imread(str(PARITY / f"{name}.png")), cv2.COLOR_BGR2RGB)
        prediction = estimator.predict(rgb)
        for array in worst:
            ref = reference[array]
            error = np.abs(getattr(prediction, array) - ref).max() / (ref.max() - ref.min())
            worst[array] = max(worst[array], float(error))
    return worst


def forward_gflop() -> float:
    """Floating-point operations of one 256x256 forward, counted on the torch model's convs
    (2 per multiply-add; the rest of the network is well under 1% of it)."""
    import torch

    from depthfleet.shared.model.midas_small import build_midas_small

    total = 0

    def count(conv: torch.nn.Conv2d, _: object, out: torch.Tensor) -> None:
        nonlocal total
        total += 2 * out.numel() * conv.weight[0].numel()

    model = build_midas_small()
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(count)
    with torch.inference_mode():
        model(torch.zeros(1, 3, SIDE, SIDE))
    return total / 1e9


def measure(variant: str, settings: Settings, threads: list[int]) -> dict[str, object]:
    settings = settings.with_(**VARIANTS[variant])
    result: dict[str, object] = {"variant": variant}
    if variant == "torch":
        result["gflop"] = forward_gflop()
    for count in threads:
        backend = load_backend(settings, count)
        result[f"{count}_threads"] = forward_ms(backend, count)
        if "parity" not in result:
            result["parity"] = parity_error(backend)
            result["rss_mb"] = rss_mb()  # the backend built and run: what a pool process holds
    return result


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), in MB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmRSS:"))) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)
    settings = Settings(weights=args.weights, cache_dir=args.cache)
    print(json.dumps(measure(args.variant, settings, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
