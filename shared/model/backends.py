"""Inference backends: one normalized (1, 3, h, w) float32 input -> (h, w) float32 output.

ONNX Runtime is the default: 1.5-2.5x faster than torch eager on CPU at the same fp32
accuracy, and a worker that uses it never imports torch. The torch backend is the reference.
OpenVINO in bf16 is the opt-in fast path (``DEPTHFLEET_PRECISION=bf16``): about twice ONNX
Runtime's speed on CPUs with AVX512-BF16 or AMX, about 1e-2 of the output range away from
the official result, so it cannot pass the parity check and is never the default.

Every backend may be called from several threads at once (``depthfleet predict`` keeps one
image per core in flight); ``threads`` is what each call uses.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime


class TorchBackend:
    """The PyTorch model in eval mode; imports torch (and timm) only when built."""

    name = "torch"

    def __init__(self, checkpoint: Path, threads: int, weights_sha256: str) -> None:
        import torch

        from depthfleet.shared.model.midas_small import build_midas_small

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
