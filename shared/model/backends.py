"""Inference backends: one normalized (1, 3, h, w) float32 input -> (h, w) float32 output.

ONNX Runtime is the default: 1.5-2.5x faster than torch eager on CPU at the same fp32
accuracy, and a worker that uses it never imports torch. The torch backend is the reference.
ncnn (``DEPTHFLEET_BACKEND=ncnn``) is exact too: its fp32 Winograd convolutions do fewer
multiplications than ONNX Runtime's direct ones. Whether that is faster depends on the CPU:
0.75x ONNX Runtime's time on one thread on a Zen 4 VM, the same time on a Zen 5 one.
OpenVINO in bf16 is the opt-in fast path (``DEPTHFLEET_PRECISION=bf16``): about twice ONNX
Runtime's speed on CPUs with AVX512-BF16 or AMX, about 1e-2 of the output range away from
the official result, so it cannot pass the parity check and is never the default.

Every backend may be called from several threads at once (``depthfleet predict`` keeps one
image per core in flight); ``threads`` is what each call uses.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime

from depthfleet.shared.errors import WeightsError

if TYPE_CHECKING:
    import ncnn

REDUCED_PRECISION = ("fp16", "bf16", "int8")  # in an ncnn.Option name: not fp32


class TorchBackend:
    """The PyTorch model in eval mode; imports torch (and timm) only when built."""

    name = "torch"

    def __init__(self, checkpoint: Path, threads: int, weights_sha256: str) -> None:
        try:
            import torch

            from depthfleet.shared.model.midas_small import build_midas_small
        except ImportError as exc:
            raise WeightsError(f"DEPTHFLEET_BACKEND=torch needs the `export` extra "
                               f"(pip install 'depthfleet[export]'): {exc}") from None

        torch.set_num_threads(threads)
        self._torch = torch
        self._model = build_midas_small(checkpoint)
        self.weights_sha256 = weights_sha256

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._model(self._torch.from_numpy(x))[0].numpy()


class OnnxRuntimeBackend:
    """An exported model (see ``onnx_export``) on ONNX Runtime's CPU execution provider.

    Give it the model as optimized for this CPU (``onnx_export.ort_optimized``): built from
    the plain export, a session holds the weights twice (about 100 MB more).
    """

    name = "onnxruntime"

    def __init__(self, model_path: Path, threads: int, weights_sha256: str) -> None:
        options = onnxruntime.SessionOptions()
        # An explicit count: left at 0, ORT starts one thread per core and pins each to its
        # core, so every worker process of a machine would crowd onto the same cores.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the graph is a chain: nothing to run side by side
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads spin for work by default, burning the core another process or
        # another image of ours could use; the cost is a few microseconds per wake-up.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The arena keeps the largest activations ever needed (a 256x256 input's) for good:
        # ~30 MB per process for a gain too small to measure on this model.
        options.enable_cpu_mem_arena = False
        self._session = onnxruntime.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self._input_name = self._session.get_inputs()[0].name
        self.weights_sha256 = weights_sha256

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input_name: x})[0][0]


class NcnnBackend:
    """A pnnx-converted model (see ``ncnn_export``) on ncnn's CPU kernels, in fp32.

    ncnn's defaults turn its fp16 and int8 paths on, and bf16 storage is one switch away
    (1.2e-2 of the output range off on this kind of CPU). ``fp32_options`` turns every option
    of those kinds off, whatever this ncnn version names them, and keeps Winograd on. The GIL
    is released while a call runs; each call uses its own extractor of the one net.
    """

    name = "ncnn"

    def __init__(self, param: Path, weights: Path, threads: int, weights_sha256: str,
                 options: ncnn.Option | None = None) -> None:
        import ncnn

        self._net = ncnn.Net()
        self._net.opt = options or fp32_options(threads)  # before loading: it shapes the kernels
        if self._net.load_param(str(param)) != 0 or self._net.load_model(str(weights)) != 0:
            raise WeightsError(f"ncnn cannot load {param.name} with {weights.name}")
        (self._input,), (self._output,) = self._net.input_names(), self._net.output_names()
        self._mat = ncnn.Mat
        self.weights_sha256 = weights_sha256

    @property
    def options(self) -> ncnn.Option:
        """The options the net runs with (for checks: it holds no copy of its own)."""
        return self._net.opt

    def __call__(self, x: np.ndarray) -> np.ndarray:
        image = np.ascontiguousarray(x[0])  # ncnn reads it in place: keep it alive meanwhile
        with self._net.create_extractor() as extractor:
            extractor.input(self._input, self._mat(image))
            status, out = extractor.extract(self._output)
            if status != 0:
                raise RuntimeError(f"ncnn failed on a {x.shape} input (status {status})")
            return np.array(out).reshape(x.shape[2:])  # a copy: ``out`` is the extractor's


def fp32_options(threads: int) -> ncnn.Option:
    """ncnn options for exact fp32 on ``threads`` threads, Winograd convolutions on."""
    import ncnn

    options = ncnn.Option()
    for name in reduced_precision_flags(options):
        setattr(options, name, False)
    options.use_winograd_convolution = True
    options.num_threads = threads
    return options


def reduced_precision_flags(options: Any) -> dict[str, bool]:
    """Every ``use_*`` option of ``options`` that trades fp32 arithmetic away, and its value."""
    return {name: getattr(options, name) for name in dir(options)
            if name.startswith("use_") and any(kind in name for kind in REDUCED_PRECISION)}


class OpenVinoBackend:
    """The exported ONNX model on OpenVINO's CPU plugin, in bf16 arithmetic (opt-in, inexact).

    Fast only on CPUs with bf16 instructions (AVX512-BF16, AMX); measured on this kind only.
    """

    name = "openvino-bf16"

    def __init__(self, model_path: Path, threads: int, weights_sha256: str,
                 callers: int = 1) -> None:
        import openvino

        config = {
            "INFERENCE_PRECISION_HINT": "bf16",
            "INFERENCE_NUM_THREADS": threads * callers,
            "NUM_STREAMS": callers,  # one stream per concurrent caller, ``threads`` each
            "ENABLE_CPU_PINNING": False,  # else every process pins to the same cores
        }
        core = openvino.Core()
        self._model = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        self._requests = threading.local()  # an infer request serves one caller at a time
        self.weights_sha256 = weights_sha256

    def __call__(self, x: np.ndarray) -> np.ndarray:
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._model.create_infer_request()
        return request.infer({0: x})[0][0].copy()  # the output tensor is reused by the next call
