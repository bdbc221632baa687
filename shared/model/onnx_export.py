"""Export MiDaS small to ONNX, once per machine and checkpoint, for the ONNX Runtime backend.

One model serves every input shape: the height and width axes are dynamic. That is exact
because the only shape-dependent parts, TensorFlow-style "SAME" padding (rewritten as ONNX's
``auto_pad=SAME_UPPER``) and the x2 upsampling, do not bake in the example's size; every
export is checked against the torch model on two shapes before it is cached. Two rewrites
make the exported graph about 8% faster than a plain export at the same arithmetic: the
padding inside the convolutions, and the fusion blocks' projection before their upsampling.

Workers must not import torch (hundreds of MB, seconds of start-up), so ``exported_onnx`` runs
the export in a child process: ``python -m depthfleet.shared.model.onnx_export CKPT OUT``.
Only that child and ``export_onnx`` import torch. torch, torchvision, timm and onnx are the
``export`` extra: a machine installed without it downloads the fleet's export from storage
(``published``) instead, and refuses to start if there is none.

``ort_optimized`` then saves the graph as ONNX Runtime optimizes it for this CPU (NCHWc
blocked layout, fused activations), also in a child process. A session built from that file
skips the rewrite and holds one copy of the weights instead of two: about 100 MB less per
worker process, same arithmetic. The file suits only CPUs like this one, so its name carries
the ONNX Runtime version and a hash of the CPU's feature flags.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import onnxruntime

from depthfleet.shared.errors import DepthFleetError, WeightsError
from depthfleet.shared.layout import model_key
from depthfleet.shared.model import published
from depthfleet.shared.model.cachefiles import locked, publish, temporary_path
from depthfleet.shared.model.weights import ResolvedWeights
from depthfleet.shared.storage import StorageError

if TYPE_CHECKING:
    import onnx
    import torch

    from depthfleet.shared.model.midas_small import FusionBlock, MidasSmall
    from depthfleet.shared.storage import Storage

log = logging.getLogger(__name__)

MODULE = "depthfleet.shared.model.onnx_export"
# Bump when the model code or the export changes, so caches re-export instead of reusing.
EXPORT_VERSION = 2
EXPORT_PACKAGES = ("torch", "torchvision", "timm", "onnx")  # the ``export`` extra
OPSET = 17
CHECK_SHAPES = ((256, 256), (160, 256))  # 1:1 and 3:2 photos
CHECK_TOLERANCE = 1e-4  # of the output range; faithful fp32 runtimes stay within 2e-6


def exported_onnx(weights: ResolvedWeights, cache_dir: Path, shared: Storage | None = None
                  ) -> Path:
    """The cached ONNX model for ``weights``: from this machine's cache, else downloaded from
    the fleet's ``shared`` storage, else exported here in a child process (which needs the
    ``export`` extra) and then shared. Raises WeightsError if none of them can provide it."""
    target = exported_path(weights, cache_dir)
    with locked(target.parent / ".lock"):
        if target.is_file() or _fetched(shared, target, weights.sha256):
            return target
        if not can_export():
            raise WeightsError(_cannot_export(target, shared), code="model_not_exported")
        _run_child([str(weights.path), str(target)], f"ONNX export of {weights.path}")
    if shared is not None:
        try:
            published.upload(shared, target, weights.sha256)
        except DepthFleetError as exc:  # this machine has its model; the others will export
            log.warning("could not share the exported model: %s", exc.message)
    return target


def exported_path(weights: ResolvedWeights, cache_dir: Path) -> Path:
    """Where this machine caches the export of ``weights`` (its name is the fleet's key too)."""
    return cache_dir / "onnx" / f"midas_small-{weights.sha256}-v{EXPORT_VERSION}.onnx"


def _fetched(shared: Storage | None, target: Path, weights_sha256: str) -> bool:
    """Whether the fleet's export is now in place; storage trouble only matters to a
    machine that could not export the model itself."""
    try:
        return shared is not None and published.fetch(shared, target, weights_sha256)
    except StorageError as exc:
        if not can_export():
            raise
        log.warning("could not look for a shared exported model, exporting here: %s", exc.message)
        return False


def can_export() -> bool:
    """Whether the ``export`` extra is installed, found without importing any of it."""
    return all(importlib.util.find_spec(name) for name in EXPORT_PACKAGES)


def _cannot_export(target: Path, shared: Storage | None) -> str:
    where = (f"nor in the fleet's storage ({shared.url}/{model_key(target.name)})" if shared
             else "and DEPTHFLEET_STORAGE_URL names no storage to download it from")
    return (f"the exported model {target.name} is not in this machine's cache ({target.parent}) "
            f"{where}, and this installation cannot export it: torch, torchvision and timm "
            "come with the `export` extra (pip install 'depthfleet[export]'). Export it once "
            "where the extra is installed, with the same DEPTHFLEET_WEIGHTS and "
            "DEPTHFLEET_STORAGE_URL: `depthfleet export-model`, or start one worker that has "
            "the extra first (see docs/deploy.md, 'Workers without torch').")


def ort_optimized(exported: Path) -> Path:
    """``exported`` as ONNX Runtime optimizes it on this CPU, saved next to it once."""
    tag = f"ort{onnxruntime.__version__}-cpu{_cpu_flags_hash()}"
    target = exported.with_name(f"{exported.stem}-{tag}.onnx")
    _build_once(target, ["--optimize", str(exported), str(target)],
                f"ONNX Runtime optimization of {exported.name}")
    return target


def _build_once(target: Path, arguments: list[str], what: str) -> None:
    """Run this module in a child process to create ``target``, unless another did already."""
    with locked(target.parent / ".lock"):
        if not target.is_file():
            _run_child(arguments, what)


def _run_child(arguments: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, "-m", MODULE, *arguments], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise WeightsError(f"{what} failed:\n{done.stderr[-2000:]}")


def _cpu_flags_hash() -> str:
    """What decides ONNX Runtime's kernels and layouts: the CPU's instruction set extensions."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        flags = ""
    identity = " ".join(sorted(flags.split(":")[-1].split())) or platform.machine()
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


def optimize_for_this_cpu(exported: Path, target: Path) -> None:
    """Let ONNX Runtime rewrite ``exported`` for this CPU, check it, and publish ``target``."""
    with temporary_path(target.parent, suffix=".onnx") as partial:
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(partial)
        reference = onnxruntime.InferenceSession(str(exported), options,
                                                 providers=["CPUExecutionProvider"])
        optimized = onnxruntime.InferenceSession(str(partial), providers=["CPUExecutionProvider"])
        for height, width in CHECK_SHAPES:
            x = np.random.default_rng(0).standard_normal((1, 3, height, width), dtype=np.float32)
            if not np.array_equal(optimized.run(None, {"image": x})[0],
                                  reference.run(None, {"image": x})[0]):
                raise RuntimeError(f"the saved optimized model computes differently at {height}x{width}")
        publish(partial, target)


def export_onnx(checkpoint: Path, target: Path) -> None:
    """Export, check against torch, then atomically publish ``target``."""
    import torch

    from depthfleet.shared.model.midas_small import build_midas_small

    model = build_midas_small(checkpoint)
    with temporary_path(target.parent, suffix=".onnx") as partial:
        with _projecting_first(model):
            torch.onnx.export(
                model,
                (torch.zeros(1, 3, *CHECK_SHAPES[0]),),
                str(partial),
                dynamo=False,  # the TorchScript exporter needs no onnxscript and exports exactly
                opset_version=OPSET,
                input_names=["image"],
                output_names=["depth"],
                dynamic_axes={"image": {2: "height", 3: "width"},
                              "depth": {1: "height", 2: "width"}},
            )
        _same_pads_into_convs(partial, _same_conv_count(model))
        _check_against_torch(model, partial)  # against the official order of operations
        publish(partial, target)


@contextlib.contextmanager
def _projecting_first(model: MidasSmall) -> Iterator[None]:
    """The fusion blocks' cheaper, equivalent order (``FusionBlock.project_first``) meanwhile."""
    blocks = cast("list[FusionBlock]", list(model.fusion))  # a ModuleList yields Modules
    for block in blocks:
        block.project_first = True
    try:
        yield
    finally:
        for block in blocks:
            block.project_first = False


def _same_conv_count(model: MidasSmall) -> int:
    return sum(type(module).__name__ == "Conv2dSame" for module in model.modules())


def _same_pads_into_convs(path: Path, expected: int) -> None:
    """Turn each exported Pad -> Conv pair back into one Conv with ``auto_pad=SAME_UPPER``.

    timm's stride-2 convs pad TensorFlow's way ("SAME": the odd pixel at the end), computed
    from the input's shape at run time, so they export as shape arithmetic feeding a Pad.
    ONNX Runtime runs that Pad as a copy of the tensor, with layout conversions around it:
    about 8% of the forward time. ONNX's own ``auto_pad=SAME_UPPER`` is the same padding
    for every input size, done inside the convolution. The caller's check against torch
    proves the rewrite.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    pads = [node for node in graph.node if node.op_type == "Pad"]
    if len(pads) != expected:
        raise RuntimeError(f"expected {expected} Pad nodes from SAME convs, found {len(pads)}")
    for pad in pads:
        consumers = [node for node in graph.node if pad.output[0] in node.input]
        if [node.op_type for node in consumers] != ["Conv"]:
            raise RuntimeError(f"{pad.name} does not feed exactly one Conv")
        conv = consumers[0]
        for attribute in [a for a in conv.attribute if a.name in ("pads", "auto_pad")]:
            conv.attribute.remove(attribute)
        conv.attribute.append(onnx.helper.make_attribute("auto_pad", "SAME_UPPER"))
        conv.input[0] = pad.input[0]
        graph.node.remove(pad)
    _drop_unused_nodes(graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _drop_unused_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes no graph output depends on (here: the padding's shape arithmetic)."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))


def _check_against_torch(model: torch.nn.Module, onnx_path: Path) -> None:
    import torch

    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for height, width in CHECK_SHAPES:
        x = rng.standard_normal((1, 3, height, width), dtype=np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        got = session.run(None, {"image": x})[0]
        error = np.abs(got - expected).max() / max(np.ptp(expected), 1e-12)
        if error > CHECK_TOLERANCE:
            raise RuntimeError(f"ONNX export differs from torch at {height}x{width}: {error:.1e}")


def main(argv: list[str]) -> int:
    optimize = argv[:1] == ["--optimize"]
    paths = argv[1:] if optimize else argv
    if len(paths) != 2:
        print(f"usage: python -m {MODULE} [--optimize EXPORTED.onnx | CHECKPOINT] OUT.onnx",
              file=sys.stderr)
        return 2
    (optimize_for_this_cpu if optimize else export_onnx)(Path(paths[0]), Path(paths[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
