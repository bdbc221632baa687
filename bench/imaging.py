"""Decode and encode costs at phone-camera size, ours against the official OpenCV path.

Run: ``.venv/bin/python bench/imaging.py`` (single-threaded OpenCV; best of a few runs, ms).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from depthfleet.shared.imaging.decode import decode_image
from depthfleet.shared.imaging.encode import encode_depth_png16, encode_heatmap_png, encode_pfm

REFERENCE = Path(__file__).resolve().parents[2] / "shared"
LARGE_JPEG = REFERENCE / "testdata" / "photos" / "large_24mp.jpg"
PREDICTION = REFERENCE / "midas" / "parity" / "coffee.npz"
PHONE_SIZE = (4032, 3024)


def best_ms(work: Callable[[], object], runs: int = 5) -> tuple[float, object]:
    timings, result = [], None
    for _ in range(runs):
        start = time.perf_counter()
        result = work()
        timings.append((time.perf_counter() - start) * 1000)
    return min(timings), result


def peak_extra_mb(statement: str) -> float:
    """Peak RSS growth of ``statement`` in a fresh process (VmHWM: ru_maxrss is inherited)."""
    script = ("from depthfleet.shared.imaging.decode import decode_image\n"
              "def peak(): return next(int(line.split()[1])\n"
              "                        for line in open('/proc/self/status') if 'VmHWM' in line)\n"
              f"data = open({str(LARGE_JPEG)!r}, 'rb').read()\n"
              "before = peak()\n"
              f"{statement}\n"
              "print(peak() - before)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return int(run.stdout) / 1024


def official_scaled(depth: np.ndarray, max_value: int) -> np.ndarray:
    return max_value * (depth - depth.min()) / (depth.max() - depth.min())


def bench_decode() -> None:
    data = LARGE_JPEG.read_bytes()
    ours, rgb = best_ms(lambda: decode_image(data, 64_000_000))
    opencv, _ = best_ms(lambda: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    print(f"decode {LARGE_JPEG.name} ({rgb.shape[1]}x{rgb.shape[0]}): ours {ours:.0f} ms "
          f"(validated), cv2.imdecode alone {opencv:.0f} ms")
    ours_mb = peak_extra_mb("decode_image(data, 64_000_000)")
    opencv_mb = peak_extra_mb("import cv2, numpy as np\n"
                              "cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)")
    print(f"  peak extra RSS: ours {ours_mb:.0f} MB, cv2.imdecode alone {opencv_mb:.0f} MB, "
          f"result {rgb.nbytes / 2**20:.0f} MB")


def bench_encode() -> None:
    depth = cv2.resize(np.load(PREDICTION)["net_output"], PHONE_SIZE, interpolation=cv2.INTER_CUBIC)
    level1 = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    rows = [
        ("depth.png (16-bit)", encode_depth_png16,
         lambda d: cv2.imencode(".png", official_scaled(d, 65535).astype("uint16"), level1)[1]),
        ("heatmap.png (Inferno)", encode_heatmap_png,
         lambda d: cv2.imencode(".png", cv2.applyColorMap(np.uint8(official_scaled(d, 255)),
                                                           cv2.COLORMAP_INFERNO), level1)[1]),
    ]
    print(f"encode {PHONE_SIZE[0]}x{PHONE_SIZE[1]} depth map (scaling included):")
    for name, ours, official in rows:
        ours_ms, ours_png = best_ms(lambda: ours(depth))
        official_ms, official_png = best_ms(lambda: official(depth))
        print(f"  {name:22s} ours {ours_ms:4.0f} ms {len(ours_png) / 1e6:5.2f} MB | "
              f"cv2 level 1 {official_ms:4.0f} ms {len(official_png) / 1e6:5.2f} MB")
    pfm_ms, pfm = best_ms(lambda: encode_pfm(depth))
    print(f"  {'depth.pfm':22s} ours {pfm_ms:4.0f} ms {len(pfm) / 1e6:5.2f} MB")


if __name__ == "__main__":
    cv2.setNumThreads(1)
    bench_decode()
    bench_encode()
