"""The official MiDaS ``run.py`` loop, step for step, as the yardstick every ratio is against.

Faithful to ``run.py`` with ``midas_v21_small_256`` on CPU: ``utils.read_image`` (cv2.imread,
BGR->RGB, /255 as float64), the official ``small_transform`` (cv2 INTER_CUBIC resize of the
whole float image, normalize, CHW float32), eager fp32 forward under ``torch.no_grad``, torch
bicubic upsampling, then ``utils.write_depth`` twice (16-bit grayscale and 8-bit Inferno, both
through cv2.imwrite) and ``utils.write_pfm``. Only the model class is ours (same weights, same
arithmetic, see tests/test_model.py). Run in its own process, so torch never touches the
process that measures our code:

    python -m bench.baseline --threads 2 OUT IMAGE...   (prints one JSON line)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

NET_SIDE, MULTIPLE = 256, 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def read_image(path: Path) -> np.ndarray:
    """MiDaS ``utils.read_image``."""
    img = cv2.imread(str(path))
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) / 255.0


def _constrain_to_multiple_of(x: float, max_val: int) -> int:
    y = (np.round(x / MULTIPLE) * MULTIPLE).astype(int)
    if y > max_val:
        y = (np.floor(x / MULTIPLE) * MULTIPLE).astype(int)
    return int(y)


def transform(image: np.ndarray) -> np.ndarray:
    """MiDaS ``Resize(256, 256, keep_aspect_ratio, multiple 32, "upper_bound", INTER_CUBIC)``,
    ``NormalizeImage`` and ``PrepareForNet``."""
    height, width = image.shape[:2]
    scale_height, scale_width = NET_SIDE / height, NET_SIDE / width
    scale = scale_width if scale_width < scale_height else scale_height  # "upper_bound"
    new_height = _constrain_to_multiple_of(scale * height, NET_SIDE)
    new_width = _constrain_to_multiple_of(scale * width, NET_SIDE)
    image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_CUBIC)
    image = (image - np.array(MEAN)) / np.array(STD)
    return np.ascontiguousarray(np.transpose(image, (2, 0, 1))).astype(np.float32)


def process(torch, model, image: np.ndarray, target_size: tuple[int, int]) -> np.ndarray:
    """``run.py``'s ``process`` on CPU: forward, then bicubic upsampling to the photo's size."""
    sample = torch.from_numpy(image).unsqueeze(0)
    prediction = model.forward(sample)
    return torch.nn.functional.interpolate(
        prediction.unsqueeze(1), size=target_size[::-1], mode="bicubic", align_corners=False,
    ).squeeze().cpu().numpy()


def official_depth_pixels(depth: np.ndarray, grayscale: bool, bits: int = 1) -> np.ndarray:
    """The pixels MiDaS ``utils.write_depth`` writes (also the encoders' test reference)."""
    if not grayscale:
        bits = 1
    if not np.isfinite(depth).all():
        depth = np.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0)
    depth_min, depth_max = depth.min(), depth.max()
    max_val = (2 ** (8 * bits)) - 1
    if depth_max - depth_min > np.finfo("float").eps:
        out = max_val * (depth - depth_min) / (depth_max - depth_min)
    else:
        out = np.zeros(depth.shape, dtype=depth.dtype)
    if not grayscale:
        out = cv2.applyColorMap(np.uint8(out), cv2.COLORMAP_INFERNO)
    return out.astype("uint8" if bits == 1 else "uint16")


def write_depth(path: str, depth: np.ndarray, grayscale: bool, bits: int = 1) -> None:
    """MiDaS ``utils.write_depth``."""
    cv2.imwrite(path + ".png", official_depth_pixels(depth, grayscale, bits))


def write_pfm(path: str, image: np.ndarray, scale: float = 1) -> None:
    """MiDaS ``utils.write_pfm`` (grayscale case)."""
    with open(path, "wb") as file:
        image = np.flipud(image)
        file.write(b"Pf\n")
        file.write(b"%d %d\n" % (image.shape[1], image.shape[0]))
        if image.dtype.byteorder == "<" or image.dtype.byteorder == "=" and sys.byteorder == "little":
            scale = -scale
        file.write(b"%f\n" % scale)
        image.tofile(file)


def run(images: list[Path], out: Path, checkpoint: Path, threads: int) -> dict[str, float]:
    """The loop; returns start-up and loop seconds (the loop is what the ratios compare)."""
    started = time.perf_counter()
    import torch

    from depthfleet.shared.model.midas_small import build_midas_small

    torch.set_num_threads(threads)
    model = build_midas_small(checkpoint)
    loop_started = time.perf_counter()
    for index, name in enumerate(images):
        original_image_rgb = read_image(name)
        image = transform(original_image_rgb)
        with torch.no_grad():
            prediction = process(torch, model, image, original_image_rgb.shape[1::-1])
        filename = str(out / f"{index:05d}-{name.stem}")
        write_depth(filename + "-gray", prediction, grayscale=True, bits=2)
        write_depth(filename, prediction, grayscale=False)
        write_pfm(filename + ".pfm", prediction.astype(np.float32))
    done = time.perf_counter()
    return {"startup_s": loop_started - started, "loop_s": done - loop_started}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("out", type=Path)
    parser.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(args.images, args.out, args.checkpoint, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
