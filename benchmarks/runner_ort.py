"""ONNX Runtime runners: ``ort-cpu``, ``ort-cuda`` (I/O binding) and ``ort-trt`` (TensorRT EP).

The model is the dynamic-batch ONNX export of the variant. On the CPU the input is a numpy
array and ``intra_op_num_threads`` is fixed to the recorded thread count (``inter_op`` = 1,
sequential execution). On the GPU the input and output live on the device as ``OrtValue``s bound
with ``io_binding`` (``bind_ortvalue_input`` / ``bind_output`` on 'cuda'), so no host copy is
timed; ``run_with_iobinding`` returns after the device work, so a monotonic clock times it.
The TensorRT EP gets what the ``trt`` runner's engine gets (like for like): one optimisation
profile with MIN 1, OPT = MAX = the measured batch, the same workspace limit and builder optimisation
level, and one timing cache for the run (the work folder); its engine cache sits next to the ONNX
file, so engine building stays in activation.
"""

from __future__ import annotations

import numpy as np
import onnx

from .runners import RUNNERS, TRT_OPT_LEVEL, TRT_WORKSPACE_GIB, Runner


def _providers() -> list:
    try:
        import onnxruntime as ort
    except Exception:
        return []
    return ort.get_available_providers()


class OrtRunner(Runner):
    backend = "ort"
    provider = "CPUExecutionProvider"

    @classmethod
    def unavailable(cls, precision: str = "fp32", mode: str = "eager") -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except Exception as e:  # pragma: no cover - onnxruntime is a dependency
            return f"onnxruntime does not import ({e})"
        if cls.provider not in _providers():
            return f"{cls.provider} not in onnxruntime's providers (install onnxruntime-gpu with a CUDA device)"
        if cls.device == "cpu" and precision != "fp32":
            return "ONNX Runtime CPU is measured in fp32 only"
        if precision == "bf16":
            return "bf16 ONNX export is not supported; use fp32 or fp16"
        if mode != "eager":
            return f"mode {mode!r} applies to torch runners only"
        return None

    def _provider_list(self) -> list:
        return [self.provider]

    def activate(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.onnx_path = self.variant.onnx("fp16" if self.precision == "fp16" else "fp32")
        self.sess = ort.InferenceSession(str(self.onnx_path), so, providers=self._provider_list())
        if self.provider not in self.sess.get_providers():
            raise RuntimeError(f"{self.provider} did not start (ONNX Runtime fell back to {self.sess.get_providers()})")
        inp = self.sess.get_inputs()[0]
        self.in_name, self.out_name = inp.name, self.sess.get_outputs()[0].name
        x = self.x.astype(np.float16) if "float16" in inp.type else self.x
        if self.device == "cuda":
            self.binding = self.sess.io_binding()
            self.x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            self.binding.bind_ortvalue_input(self.in_name, self.x_dev)
            self.binding.bind_output(self.out_name, "cuda", 0)
        else:
            self.feed = {self.in_name: x}
        self.infer()  # first run: allocations, TensorRT EP engine build

    def infer(self) -> None:
        if self.device == "cuda":
            self.sess.run_with_iobinding(self.binding)
        else:
            self.out = self.sess.run([self.out_name], self.feed)[0]

    def output(self) -> np.ndarray:
        if self.device == "cuda":
            return self.binding.copy_outputs_to_cpu()[0].astype(np.float32)
        return np.asarray(self.out, dtype=np.float32)

    def deactivate(self) -> None:
        self.sess = self.binding = self.x_dev = self.feed = self.out = None


@RUNNERS.register("ort-cpu")
class OrtCPU(OrtRunner):
    """ONNX Runtime CPUExecutionProvider, fixed intra-op threads."""

    device, timer, provider = "cpu", "wall", "CPUExecutionProvider"


@RUNNERS.register("ort-cuda")
class OrtCUDA(OrtRunner):
    """ONNX Runtime CUDAExecutionProvider with I/O binding on the device."""

    device, timer, provider = "cuda", "wall", "CUDAExecutionProvider"


@RUNNERS.register("ort-trt")
class OrtTRT(OrtRunner):
    """ONNX Runtime TensorrtExecutionProvider (CUDA EP as fallback) with explicit profile shapes."""

    device, timer, provider = "cuda", "wall", "TensorrtExecutionProvider"

    def _provider_list(self) -> list:
        name = self.sess_input_name()
        c, (h, w) = self.variant.in_chans, self.variant.img_size
        shape = lambda b: f"{name}:{b}x{c}x{h}x{w}"  # noqa: E731
        opts = {
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(self.batch),
            "trt_profile_max_shapes": shape(self.batch),
            "trt_fp16_enable": self.precision == "fp16",
            "trt_max_workspace_size": int(TRT_WORKSPACE_GIB * (1 << 30)),
            "trt_builder_optimization_level": TRT_OPT_LEVEL,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(self.variant.timing_cache().parent),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self.onnx_path.parent / "trt-cache"),
        }
        return [("TensorrtExecutionProvider", opts), "CUDAExecutionProvider"]

    def sess_input_name(self) -> str:
        return onnx.load(str(self.onnx_path), load_external_data=False).graph.input[0].name
