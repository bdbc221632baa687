"""``parallax.mp4``: the photo as a short seamless loop seen by a camera that moves a little.

Each frame is a depth-aware forward warp of the photo. A pixel of relative disparity ``t``
(0 the farthest, 1 the nearest: ``relative_disparity``) moves by ``S * (t - FOCUS) * u``,
where ``u`` is the camera's position on its path (a unit circle or a swing) and ``S`` is
``motion`` times the video's longer side: at the path's extremes the nearest pixels have moved
``S`` pixels relative to the farthest, and pixels at mid depth stay still.

How a frame is made (all NumPy/OpenCV, whole-frame vectorised):

1. Splat: every photo pixel goes to its rounded target; where several land on one, the nearest
   wins (a z-buffer, ``np.maximum.at`` on disparity), so near things cover far ones.
2. Holes: targets nobody landed on are disocclusions behind a near edge (or cracks where a
   slope stretches). Each takes the disparity of the *nearer* of the closest covered pixels
   along the rows and columns within reach of the largest shift.
3. Colour: sampled bilinearly from the photo at ``q - shift(t(q))`` (``cv2.remap``). For a
   covered pixel that is its source, to a subpixel. For a hole, sampling with the near edge's
   disparity lands on the photo just behind that edge, on the far side: the background is
   continued into the hole, never the near object smeared across it.

The photo is first shrunk to the video's size plus a margin of the largest shift on every side,
which the frame crops away, so no frame shows the photo's border moving in. Frames go to the
encoder one at a time (PyAV: FFmpeg's libx264, ``yuv420p``, ``+faststart`` so playback starts
before the whole file is there); memory stays at a few frames' worth whatever the loop's length.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from depthfleet.shared.depth import output_size, relative_disparity, resized
from depthfleet.shared.options import number, option_object

if TYPE_CHECKING:  # PyAV is imported where a video is encoded: the API imports the catalog only
    import av

MAX_SIDE = 1280  # the video's longer side at most (a smaller max_side shrinks it further)
FPS = 24
SECONDS = 3
FOCUS = 0.5  # the disparity that stays still: mid depth, so the largest shift is S / 2
PATHS = ("circle", "horizontal", "vertical")
DEFAULT_MOTION, MAX_MOTION = 0.03, 0.1
DENSE_HOLES = 0.05  # of a frame: past this, holes are filled run by run (``fill_holes``)
# One thread, as a worker process runs everything; a short lookahead: the default 10 frames
# held 35 MB more at 1280x960 for a file no smaller.
X264 = {"crf": "20", "preset": "veryfast", "threads": "1", "profile": "high",
        "x264-params": "rc-lookahead=4"}


@dataclass(frozen=True)
class ParallaxOptions:
    """``options.parallax``: ``motion`` (0..0.1 of the longer side, the nearest pixels' travel
    relative to the farthest) and ``path`` (``circle``, ``horizontal`` or ``vertical``)."""

    motion: float = DEFAULT_MOTION
    path: str = "circle"

    @classmethod
    def parse(cls, raw: object) -> ParallaxOptions:
        """From a request's JSON (``None``: the defaults); ValueError saying what is wrong."""
        values = option_object(raw, "parallax", ("motion", "path"))
        motion = number(values, "motion", DEFAULT_MOTION, 0, MAX_MOTION, "parallax")
        path = values.get("path", "circle")
        if path not in PATHS:
            raise ValueError(f"options.parallax.path must be one of {list(PATHS)}")
        return cls(float(motion), str(path))

    def to_dict(self) -> dict[str, object]:
        return {"motion": self.motion, "path": self.path}

    @property
    def token(self) -> str:
        """What sets the video apart in a result folder's name."""
        return f"{self.path}{self.motion:g}"


def video_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(H, W) of the video: the photo's, capped to ``MAX_SIDE`` (and ``max_side``), even
    (yuv420p halves both for its colour planes)."""
    side = MAX_SIDE if max_side is None else min(MAX_SIDE, max_side)
    h, w = output_size(height, width, side)
    return max(2, h - h % 2), max(2, w - w % 2)


def camera_path(path: str, frames: int) -> np.ndarray:
    """(frames, 2) camera positions (x, y), at most 1 from the centre; periodic, so the
    frame after the last would be the first: the loop has no seam."""
    phase = 2 * np.pi * np.arange(frames) / frames
    zero = np.zeros(frames)
    x, y = {"circle": (np.cos(phase), np.sin(phase)),
            "horizontal": (np.sin(phase), zero),
            "vertical": (zero, np.sin(phase))}[path]
    return np.stack([x, y], axis=1)


class Warper:
    """Warps one photo and its disparity to frames of ``size`` (H, W) cut from the photo's
    middle (``offset`` (x, y) pixels in), for any shift; precomputes what every frame shares."""

    def __init__(self, rgb: np.ndarray, disparity: np.ndarray, size: tuple[int, int],
                 offset: tuple[int, int] = (0, 0), reach: int = 1) -> None:
        self.rgb, self.size, self.offset = np.ascontiguousarray(rgb), size, offset
        self.reach = max(1, reach)
        rows, cols = disparity.shape
        self.t = np.ascontiguousarray(disparity, np.float32).ravel()
        self.d = self.t - np.float32(FOCUS)
        grid_y, grid_x = np.mgrid[0:rows, 0:cols].astype(np.float32)
        self.src_x = (grid_x - offset[0]).ravel()
        self.src_y = (grid_y - offset[1]).ravel()
        out_y, out_x = np.mgrid[0:size[0], 0:size[1]].astype(np.float32)
        self.out_x, self.out_y = out_x + offset[0], out_y + offset[1]

    def frame(self, shift: tuple[float, float]) -> np.ndarray:
        """The (H, W, 3) uint8 frame where disparity ``t`` moved by ``shift * (t - FOCUS)``."""
        z = self.splat(shift)
        fill_holes(z, self.reach, abs(shift[1]) >= 0.5, abs(shift[0]) >= 0.5)
        z -= np.float32(FOCUS)
        map_x = cv2.scaleAdd(z, -float(shift[0]), self.out_x)
        map_y = cv2.scaleAdd(z, -float(shift[1]), self.out_y)
        return cv2.remap(self.rgb, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    def splat(self, shift: tuple[float, float]) -> np.ndarray:
        """(H, W) float32: the largest disparity that landed on each pixel, -1 where none.

        Targets off the frame land in a one-pixel border of the buffer, cut off after: cheaper
        than selecting the pixels that stay on it.
        """
        height, width = self.size
        x = self._rounded(cv2.scaleAdd(self.d, float(shift[0]), self.src_x), width)
        y = self._rounded(cv2.scaleAdd(self.d, float(shift[1]), self.src_y), height)
        y *= width + 2
        y += x
        z = np.full((height + 2) * (width + 2), -1.0, np.float32)
        np.maximum.at(z, y.ravel(), self.t)
        return np.ascontiguousarray(z.reshape(height + 2, width + 2)[1:-1, 1:-1])

    @staticmethod
    def _rounded(coordinate: np.ndarray, size: int) -> np.ndarray:
        """Nearest whole coordinates + 1, off-frame ones clipped to the border (0 or size + 1)."""
        np.clip(coordinate, -1, size, out=coordinate)
        coordinate += 1.5
        return coordinate.astype(np.int32)  # truncation of a positive number: rounding


def fill_holes(z: np.ndarray, reach: int, columns: bool = True, rows: bool = True) -> None:
    """Give each hole of ``z`` (negative; C-contiguous) the largest disparity among the
    closest filled pixels left and right of it (``rows``) and above and below (``columns``)
    within ``reach``: a disocclusion's near edge. Holes with none in reach take ``FOCUS``
    (they do not move).

    Two ways to the same values: few holes (a real photo's smooth depth: 1-2% of a frame)
    are walked from; many (noise-like depth, 40%) are handled as runs, whole rows at a time.
    """
    flat = z.reshape(-1)
    holes = flat < 0
    where = np.flatnonzero(holes)
    if not len(where):
        return
    if len(where) > DENSE_HOLES * flat.size:
        best = np.full(z.shape, -1.0, np.float32)
        if rows:
            np.maximum(best, _along_rows(z, holes.reshape(z.shape), reach), out=best)
        if columns:
            along = _along_rows(np.ascontiguousarray(z.T),
                                np.ascontiguousarray(holes.reshape(z.shape).T), reach)
            np.maximum(best, along.T, out=best)
        found = best.reshape(-1)[where]
    else:
        found = np.full(len(where), -1.0, np.float32)
        width = z.shape[1]
        for step, wanted in ((1, rows), (-1, rows), (width, columns), (-width, columns)):
            if wanted:
                _nearest_filled(flat, holes, where, step, reach, width, found)
    found[found < 0] = FOCUS
    flat[where] = found


def _along_rows(z: np.ndarray, holes: np.ndarray, reach: int) -> np.ndarray:
    """(H, W): at each hole, the larger of ``z`` at the filled pixels ending its run of holes
    in its row, if within ``reach`` (else, and off holes, -1). Holes one pixel wide (most, on
    a stretched surface) take a few whole-frame slices; the longer runs ``_run_ends``."""
    out = np.full(z.shape, -1.0, np.float32)
    crack = holes[:, 1:-1] & ~holes[:, :-2] & ~holes[:, 2:]
    np.copyto(out[:, 1:-1], np.maximum(z[:, :-2], z[:, 2:]), where=crack)
    longer = holes.copy()
    longer[:, 1:-1][crack] = False
    return np.maximum(out, _run_ends(z, longer, reach), out=out)


def _run_ends(z: np.ndarray, holes: np.ndarray, reach: int) -> np.ndarray:
    """(H, W): at each hole, the larger of ``z`` at the filled pixels that end its run of
    holes on the left and on the right, if within ``reach`` of it (else, and off holes, -1).

    Works on runs: one pass over the frame finds where runs start and stop, the rest costs
    per hole.
    """
    height, width = holes.shape
    stride = width + 1  # a filled column after each row ends its runs there
    padded = np.zeros((height, stride), np.int8)
    padded[:, :width] = holes
    edges = np.diff(padded.ravel(), prepend=np.int8(0))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = stops - starts
    values = np.full(height * stride, -1.0, np.float32)
    values.reshape(height, stride)[:, :width] = z  # the pad column stays -1: no neighbour
    left = np.where(starts % stride > 0, values[starts - 1], np.float32(-1))
    right = values[stops]  # a stop is never past the end: every row ends in the pad column
    offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    from_left = np.where(offset < reach, np.repeat(left, lengths), np.float32(-1))
    from_right = np.where(np.repeat(lengths, lengths) - offset <= reach,
                          np.repeat(right, lengths), np.float32(-1))
    out = np.full(height * stride, -1.0, np.float32)
    out[np.repeat(starts, lengths) + offset] = np.maximum(from_left, from_right)
    return out.reshape(height, stride)[:, :width]


def _nearest_filled(flat: np.ndarray, holes: np.ndarray, where: np.ndarray, step: int,
                    reach: int, width: int, best: np.ndarray) -> None:
    """Raise ``best`` (per hole at flat index ``where``) to the value of the first filled
    pixel ``step`` by ``step`` from it, within ``reach`` steps and the frame.

    Walks all holes one step at a time, dropping each as it finds its pixel: the work is
    the holes' distances to their run's end (a pixel or two on a stretched surface), not
    the frame.
    """
    todo = np.arange(len(where))
    position = where.copy()
    column = where % width if abs(step) == 1 else None
    for _ in range(reach):
        position += step
        if column is not None:
            column += step
            inside = (column >= 0) & (column < width)
        else:
            inside = (position >= 0) & (position < flat.size)
        if not inside.all():
            todo, position = todo[inside], position[inside]
            column = column[inside] if column is not None else None
        filled = ~holes[position]
        hit = todo[filled]
        best[hit] = np.maximum(best[hit], flat[position[filled]])
        todo, position = todo[~filled], position[~filled]
        if column is not None:
            column = column[~filled]
        if not len(todo):
            return


def frames(rgb: np.ndarray, depth: np.ndarray, options: ParallaxOptions,
           max_side: int | None = None) -> Iterator[np.ndarray]:
    """The loop's RGB frames, one at a time (``FPS * SECONDS`` of them)."""
    height, width = video_size(rgb.shape[0], rgb.shape[1], max_side)
    travel = options.motion * max(height, width)  # S: nearest against farthest, in pixels
    margin = math.ceil(travel * max(FOCUS, 1 - FOCUS)) + 1
    scale = 1 + 2 * margin / min(height, width)
    canvas_h, canvas_w = round(height * scale), round(width * scale)
    photo = resized(rgb, canvas_h, canvas_w)
    disparity = resized(relative_disparity(depth), canvas_h, canvas_w)  # scaled as given
    warper = Warper(photo, disparity, (height, width),
                    ((canvas_w - width) // 2, (canvas_h - height) // 2), math.ceil(travel) + 1)
    for x, y in camera_path(options.path, FPS * SECONDS):
        yield warper.frame((travel * x, travel * y))


def render_parallax(rgb: np.ndarray, depth: np.ndarray, options: ParallaxOptions,
                    max_side: int | None = None) -> bytes:
    """``parallax.mp4`` of an (H, W, 3) uint8 RGB photo and its depth map (any size: it is
    resized to the video's), H.264 in MP4."""
    return encode_mp4(frames(rgb, depth, options, max_side), FPS)


def encode_mp4(rgb_frames: Iterator[np.ndarray], fps: int) -> bytes:
    """H.264 (libx264, ``yuv420p``, BT.709) in an MP4 whose index comes first (``faststart``).

    Written to a temporary file: FFmpeg's faststart pass reopens its output by name to move
    the index in front, which an in-memory output cannot be.
    """
    import av
    from av.video.reformatter import ColorRange, Colorspace

    with tempfile.TemporaryDirectory(prefix="depthfleet-mp4-") as scratch:
        path = Path(scratch) / "parallax.mp4"
        with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            stream = None
            for rgb in rgb_frames:
                if stream is None:
                    stream = _h264_stream(out, rgb.shape[1], rgb.shape[0], fps)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                out.mux(stream.encode(frame.reformat(
                    format="yuv420p", dst_colorspace=Colorspace.ITU709,
                    dst_color_range=ColorRange.MPEG)))
            if stream is not None:
                out.mux(stream.encode(None))
        return path.read_bytes()


def _h264_stream(out: av.container.OutputContainer, width: int, height: int,
                 fps: int) -> av.VideoStream:
    from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc

    stream = out.add_stream("libx264", rate=Fraction(fps))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.options = dict(X264)
    context = stream.codec_context  # tagged as converted: BT.709, limited range
    context.color_range, context.colorspace = ColorRange.MPEG, Colorspace.ITU709
    context.color_primaries, context.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
    return stream
