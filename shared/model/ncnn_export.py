"""Convert the exported ONNX model to ncnn with pnnx, once per machine, for the ncnn backend.

pnnx reads ONNX directly. Its wheel declares torch but its binary does not link it, so it is
installed with ``--no-deps`` (``[tool.depthfleet]`` in pyproject.toml) and never imported
here (its Python package imports torch): we run the binary. ``fp16=0`` keeps the weights in
fp32 (pnnx stores fp16 by default); the two input shapes make the graph shape-agnostic.

``ncnn_model`` converts in a child process (``python -m depthfleet.shared.model.ncnn_export
EXPORTED.onnx PARAM``), which checks the result against ONNX Runtime on the exported model at
``CHECK_SHAPES`` before publishing it, like ``onnx_export.ort_optimized``. The entry's names
carry what decides its content: the exported model's name (weights sha256 and
``EXPORT_VERSION``), the pnnx and ncnn versions, and ``CONVERT_VERSION``. Its manifest,
published last, holds the sha256 of the other two files; every load checks them, and a
damaged or half-written entry is converted again.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from depthfleet.shared.digests import sha256_file
from depthfleet.shared.errors import WeightsError
from depthfleet.shared.model.cachefiles import locked, publish, temporary_path
from depthfleet.shared.model.onnx_export import CHECK_TOLERANCE

log = logging.getLogger(__name__)

MODULE = "depthfleet.shared.model.ncnn_export"
# Bump when the conversion's arguments or checks change, so caches convert again.
CONVERT_VERSION = 1
PNNX_SHAPES = ("inputshape=[1,3,256,256]", "inputshape2=[1,3,192,256]")
# Network sizes are multiples of 32 with the longer side 256: both orientations, both extremes.
CHECK_SHAPES = ((256, 256), (192, 256), (256, 160), (32, 256), (256, 32))
PNNX_OUTPUTS = {"pnnxparam": "model.pnnx.param", "pnnxbin": "model.pnnx.bin",
                "pnnxpy": "model_pnnx.py", "pnnxonnx": "model.pnnx.onnx",
                "ncnnparam": "model.ncnn.param", "ncnnbin": "model.ncnn.bin",
                "ncnnpy": "model_ncnn.py"}  # all of them, else pnnx writes next to its input
ECHO = re.compile(r"\w+ = ")  # pnnx's echo of its arguments ("fp16 = 0"), before its work


@dataclass(frozen=True)
class NcnnModel:
    """One cache entry: the graph, its weights, and the manifest that vouches for both."""

    param: Path
    weights: Path
    manifest: Path

    @classmethod
    def of(cls, exported: Path) -> NcnnModel:
        return cls.named(exported.with_name(f"{exported.stem}-{_versions_tag()}.ncnn.param"))

    @classmethod
    def named(cls, param: Path) -> NcnnModel:
        base = str(param.with_name(param.name.removesuffix(".param")))  # versions hold dots
        return cls(param, Path(f"{base}.bin"), Path(f"{base}.json"))

    def hashes(self) -> dict[str, str]:
        return {"param": sha256_file(self.param), "bin": sha256_file(self.weights)}

    def is_intact(self) -> bool:
        """True if the manifest exists and both files still hash to what it recorded."""
        try:
            recorded = json.loads(self.manifest.read_text())
            return {key: recorded[key] for key in ("param", "bin")} == self.hashes()
        except (OSError, ValueError, KeyError):
            return False

    def remove(self) -> None:
        for path in (self.manifest, self.param, self.weights):  # the manifest first
            path.unlink(missing_ok=True)


def ncnn_model(exported: Path) -> NcnnModel:
    """The verified ncnn conversion of ``exported``, converting it in a child process if needed."""
    model = NcnnModel.of(exported)
    with locked(exported.parent / ".lock"):
        if not model.is_intact():
            if model.manifest.exists():
                log.warning("ncnn model %s does not match its manifest: converting again",
                            model.param.name)
            model.remove()
            done = subprocess.run([sys.executable, "-m", MODULE, str(exported), str(model.param)],
                                  capture_output=True, text=True, errors="replace")
            if done.returncode != 0:
                raise WeightsError(f"ncnn conversion of {exported.name} failed:\n"
                                   f"{done.stderr[-2000:]}")
    return model


def _versions_tag() -> str:
    return f"pnnx{_version('pnnx')}-ncnn{_version('ncnn')}-c{CONVERT_VERSION}"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsError(f"DEPTHFLEET_BACKEND=ncnn needs the {package} package, which is not "
                           "installed (scripts/bootstrap installs it)") from None


def convert(exported: Path, model: NcnnModel) -> None:
    """Convert with pnnx, check against ONNX Runtime, then publish the files, manifest last."""
    with tempfile.TemporaryDirectory(dir=model.param.parent, prefix=".pnnx-") as work:
        converted = _run_pnnx(exported, Path(work))
        error = _check_against_onnxruntime(exported, converted)
        hashes = converted.hashes()
        publish(converted.param, model.param)
        publish(converted.weights, model.weights)
    record = {**hashes, "exported": exported.name, "max_error_of_range": error,
              "checked_shapes": [f"{height}x{width}" for height, width in CHECK_SHAPES]}
    with temporary_path(model.manifest.parent, suffix=".json") as partial:
        partial.write_text(json.dumps(record, indent=1) + "\n")
        publish(partial, model.manifest)


def _run_pnnx(exported: Path, work: Path) -> NcnnModel:
    """pnnx's binary on ``exported``, every output in ``work``; the ncnn model, unpublished."""
    outputs = {key: work / name for key, name in PNNX_OUTPUTS.items()}
    source = work / "model.onnx"  # pnnx writes a simplified copy next to its input
    source.symlink_to(exported.resolve())
    command = [str(_pnnx_binary()), str(source), *PNNX_SHAPES, "fp16=0",
               *(f"{key}={path}" for key, path in outputs.items())]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, errors="replace")
    converted = NcnnModel.named(outputs["ncnnparam"])
    if done.returncode != 0 or not (converted.param.is_file() and converted.weights.is_file()):
        raise RuntimeError(f"pnnx failed on {exported.name} (exit status {done.returncode}): "
                           f"{_diagnostics(done.stdout + done.stderr)}")
    return converted


def _diagnostics(output: str, lines: int = 12) -> str:
    """pnnx's last words, without the echo of its arguments and terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", output)
    said = [line for line in text.splitlines() if line.strip() and not ECHO.match(line)]
    return "\n".join(said[-lines:]) or "(no output)"


def _pnnx_binary() -> Path:
    """The executable inside the pnnx package, found without importing it (that imports torch)."""
    spec = importlib.util.find_spec("pnnx")
    folders = spec.submodule_search_locations if spec else None
    binary = Path(folders[0]) / "pnnx" if folders else None
    if binary is None or not binary.is_file():
        raise RuntimeError("the pnnx package holds no pnnx executable (pip install --no-deps pnnx)")
    return binary


def _check_against_onnxruntime(exported: Path, converted: NcnnModel) -> float:
    """The largest error, of the output range, over ``CHECK_SHAPES``; raises above tolerance."""
    from depthfleet.shared.model.backends import NcnnBackend, OnnxRuntimeBackend

    ncnn_backend = NcnnBackend(converted.param, converted.weights, threads=1, weights_sha256="")
    reference = OnnxRuntimeBackend(exported, threads=1, weights_sha256="")
    rng = np.random.default_rng(0)
    worst = 0.0
    for height, width in CHECK_SHAPES:
        x = rng.standard_normal((1, 3, height, width), dtype=np.float32)
        expected = reference(x)
        error = float(np.abs(ncnn_backend(x) - expected).max() / max(np.ptp(expected), 1e-12))
        if error > CHECK_TOLERANCE:
            raise RuntimeError(f"the ncnn model differs from ONNX Runtime at {height}x{width}: "
                               f"{error:.1e} of the output range")
        worst = max(worst, error)
    return worst


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: python -m {MODULE} EXPORTED.onnx OUT.param", file=sys.stderr)
        return 2
    try:
        convert(Path(argv[0]), NcnnModel.named(Path(argv[1])))
    except RuntimeError as exc:  # a failure we explain: the message, not a traceback
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
