"""Export stage: ONNX with dynamic axes, graph clean-up, parity checks, TensorRT engines.

Installed as ``vitcompress.exporters``; stands on ``vitcompress`` (it reads artifacts).
"""
