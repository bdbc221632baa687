"""MiDaS v2.1 small (``midas_v21_small_256``): monocular relative inverse depth.

* `Towards Robust Monocular Depth Estimation: Mixing Datasets for Zero-shot Cross-dataset
  Transfer` - https://arxiv.org/abs/1907.01341 (Ranftl et al., TPAMI 2022)
* Official code: https://github.com/isl-org/MiDaS (``MidasNet_small`` in ``midas_net_custom.py``,
  the decoder blocks in ``blocks.py``); torch.hub's ``MiDaS_small`` is this network with
  ``features=64, expand=True, non_negative=True``.

The network, from input (N, 3, h, w) to output (N, h, w), for h and w multiples of 32:

* encoder: EfficientNet-Lite3 from timm (the official code fetches the same network from
  gen-efficientnet-pytorch through torch.hub), features at strides 4, 8, 16 and 32;
* lateral: one 3x3 conv per feature map, widening to 64, 128, 256 and 512 channels;
* fusion: from the coarsest level to the finest, add the level's features (through a residual
  unit), refine with another residual unit, upsample x2 and halve the channels;
* head: back to full resolution, one output channel, ReLU (inverse depth is never negative).

The official checkpoint stores the same weights under other names; ``checkpoint_filter_fn``
maps them onto ours and ``load_checkpoint`` accepts a file only if it matches all 482 official
keys and shapes, so a wrong or damaged file fails at start-up, not as silently bad depth.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from depthfleet.shared.errors import WeightsError

FEATURES = 64  # decoder width at the finest level; "expand" doubles it at every coarser level

# Official key prefix -> ours. The official backbone groups timm's modules into four
# nn.Sequential "layers" (layer1.2 is the stem's activation, which has no weights).
_BACKBONE_KEYS = (
    ("pretrained.layer1.0.", "encoder.conv_stem."),
    ("pretrained.layer1.1.", "encoder.bn1."),
    ("pretrained.layer1.3.", "encoder.blocks.0."),
    ("pretrained.layer1.4.", "encoder.blocks.1."),
    ("pretrained.layer2.0.", "encoder.blocks.2."),
    ("pretrained.layer3.0.", "encoder.blocks.3."),
    ("pretrained.layer3.1.", "encoder.blocks.4."),
    ("pretrained.layer4.0.", "encoder.blocks.5."),
    ("pretrained.layer4.1.", "encoder.blocks.6."),
)
# The official decoder lives in ``scratch``: layer{i}_rn are our lateral convs, refinenet{i}
# our fusion blocks (resConfUnit1 takes the skip, resConfUnit2 refines), output_conv our head
# (its entries 1 and 3 are the upsampling and a ReLU, which have no weights).
_DECODER_KEYS = tuple(
    pair
    for level in range(4)
    for pair in (
        (f"scratch.layer{level + 1}_rn.", f"lateral.{level}."),
        (f"scratch.refinenet{level + 1}.resConfUnit1.", f"fusion.{level}.skip_unit."),
        (f"scratch.refinenet{level + 1}.resConfUnit2.", f"fusion.{level}.unit."),
        (f"scratch.refinenet{level + 1}.out_conv.", f"fusion.{level}.project."),
    )
) + (
    ("scratch.output_conv.0.", "head.conv1."),
    ("scratch.output_conv.2.", "head.conv2."),
    ("scratch.output_conv.4.", "head.conv3."),
)
OFFICIAL_TO_OURS = _BACKBONE_KEYS + _DECODER_KEYS
# The deepest official fusion block has a skip unit that its forward never calls (there is no
# coarser path to add to): 4.7M parameters that are in the file but not in our model.
UNUSED_OFFICIAL_PREFIX = "scratch.refinenet4.resConfUnit1."

_MAX_KEYS_IN_MESSAGE = 8


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))): refines features without changing their shape."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: x is still needed for the residual sum.
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds one encoder level to the decoder path, then upsamples x2 and projects.

    ``project_first`` swaps the last two steps. Both are linear and bilinear weights sum to 1
    (so the bias passes through unchanged): the same function, with the 1x1 projection on a
    quarter of the pixels and the upsampling on fewer channels. Rounding moves by about 1e-7
    of the output range. The ONNX export sets it; the reference keeps the official order.
    """

    def __init__(self, channels: int, out_channels: int, takes_skip: bool = True) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(channels) if takes_skip else None
        self.unit = ResidualConvUnit(channels)
        self.project = nn.Conv2d(channels, out_channels, kernel_size=1)
        self.project_first = False

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_unit is not None:
            x = x + self.skip_unit(skip)
        x = self.unit(x)
        if self.project_first:
            return _upsample_x2_aligned(self.project(x))
        return self.project(_upsample_x2_aligned(x))


def _upsample_x2_aligned(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class DepthHead(nn.Module):
    """From the finest fusion output (stride 2) to one non-negative channel at stride 1."""

    def __init__(self, channels: int = FEATURES, hidden: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // 2, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels // 2, hidden, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(hidden, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The official head upsamples with align_corners=False, unlike the fusion blocks.
        x = F.interpolate(self.conv1(x), scale_factor=2, mode="bilinear", align_corners=False)
        x = F.relu(self.conv2(x))
        return F.relu(self.conv3(x)).squeeze(1)


class MidasSmall(nn.Module):
    """MiDaS v2.1 small: (N, 3, h, w) normalized RGB -> (N, h, w) relative inverse depth."""

    def __init__(self, encoder: nn.Module, features: int = FEATURES) -> None:
        super().__init__()
        feature_info: Any = encoder.feature_info  # timm's FeatureInfo, set at run time
        in_widths = feature_info.channels()  # 32, 48, 136, 384 for Lite3
        widths = [features * 2**level for level in range(len(in_widths))]  # 64 ... 512
        out_widths = [features] + widths[:-1]  # each block halves, except the finest
        self.encoder = encoder
        self.lateral = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
            for c_in, c_out in zip(in_widths, widths)
        )
        self.fusion = nn.ModuleList(
            FusionBlock(width, out_width, takes_skip=level < len(widths) - 1)
            for level, (width, out_width) in enumerate(zip(widths, out_widths))
        )
        self.head = DepthHead(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = [lateral(f) for lateral, f in zip(self.lateral, self.encoder(x))]
        path = self.fusion[-1](levels[-1])
        for fuse, level in zip(reversed(self.fusion[:-1]), reversed(levels[:-1])):
            path = fuse(path, level)
        return self.head(path)


def build_midas_small(checkpoint: str | Path | None = None) -> MidasSmall:
    """The network in eval mode, with weights from ``checkpoint`` if given. Never downloads."""
    encoder = timm.create_model(
        "tf_efficientnet_lite3",
        features_only=True,
        out_indices=(1, 2, 3, 4),
        exportable=True,
        pretrained=False,
    )
    model = MidasSmall(encoder)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def _swap_prefix(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official MiDaS small keys -> ours; drops the unused skip unit of the deepest block.

    Keys that match no rule pass through unchanged, so a strict ``load_state_dict`` reports
    them under the name they have in the file.
    """
    return {
        _swap_prefix(key, OFFICIAL_TO_OURS): value
        for key, value in state_dict.items()
        if not key.startswith(UNUSED_OFFICIAL_PREFIX)
    }


def official_shapes(model: MidasSmall) -> dict[str, torch.Size]:
    """Key -> shape of the official checkpoint, derived from ``model`` (482 entries)."""
    ours_to_official = tuple((ours, official) for official, ours in OFFICIAL_TO_OURS)
    shapes = {_swap_prefix(k, ours_to_official): v.shape for k, v in model.state_dict().items()}
    # The unused unit has the shapes of its sibling in the same block.
    unused = cast(FusionBlock, model.fusion[-1]).unit.state_dict()
    shapes.update({UNUSED_OFFICIAL_PREFIX + k: v.shape for k, v in unused.items()})
    return shapes


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in ``path``: a bare one (the release file) or ``{"model": ...}``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # garbage raises RuntimeError, UnpicklingError, EOFError, IndexError...
        # Not torch's message: it suggests weights_only=False, wrong advice for a bad file.
        raise WeightsError(
            f"{path} is not a readable PyTorch checkpoint: {_describe_file(path)}"
        ) from exc
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state_dict of tensors")
    return dict(obj)


def _describe_file(path: str | Path) -> str:
    """Size and first bytes: tells a truncated file from, say, a saved HTML error page."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    size = Path(path).stat().st_size
    return f"{size} bytes starting with {head!r} (truncated, damaged or another format)"


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_IN_MESSAGE])
    more = len(keys) - _MAX_KEYS_IN_MESSAGE
    return f"{shown} and {more} more" if more > 0 else shown


def check_official_keys(state_dict: Mapping[str, torch.Tensor], model: MidasSmall) -> None:
    """Raise WeightsError naming every missing, unexpected or misshaped official key."""
    expected = official_shapes(model)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} (expected {tuple(expected[k])}, got {tuple(v.shape)})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k]
    ]
    found = {"missing": missing, "unexpected": unexpected, "misshaped": misshaped}
    problems = [f"{len(keys)} {what} key(s): {_key_list(keys)}" for what, keys in found.items() if keys]
    if problems:
        raise WeightsError("not a MiDaS v2.1 small checkpoint: " + "; ".join(problems))


def load_checkpoint(model: MidasSmall, path: str | Path) -> None:
    """Load an official-layout checkpoint strictly: every key, every shape, nothing extra."""
    state_dict = read_checkpoint(path)
    check_official_keys(state_dict, model)
    model.load_state_dict(checkpoint_filter_fn(state_dict), strict=True)
