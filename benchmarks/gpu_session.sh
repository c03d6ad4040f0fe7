#!/usr/bin/env bash
# GPU measurements in one call on a machine with an NVIDIA GPU, PyTorch, timm and onnx but no
# package index (the project's own checkout as the working directory):
#
#   bash benchmarks/gpu_session.sh OUT_DIR [WHEEL_DIR]
#
# WHEEL_DIR (default .whl) holds the wheels the machine lacks, at least onnx_graphsurgeon and,
# for ort-cuda, onnxruntime_gpu (joined from its pieces beforehand); they are installed with
# --no-deps into a private folder. vitcompress itself is installed the same way, without build
# isolation. Then it runs the DeiT-S suite on torch-cuda (+ ort-cuda where onnxruntime-gpu
# imports) and the ViT-L token benchmark (dense, topk-vpa at the 6% rate, tome at matched MACs;
# fp16, batch 64), writing both reports under OUT_DIR for benchmarks/results/.
set -euo pipefail
out=${1:?usage: gpu_session.sh OUT_DIR [WHEEL_DIR]}
wheels=${2:-.whl}
site=$(mktemp -d)
if compgen -G "$wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$wheels"/*.whl
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" .
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
mkdir -p "$out"
python3 -m vitcompress.benchmarks.suite --device cuda --scale full --precision fp16 \
  --backend torch-cuda,ort-cuda --report "$out/deit_s_gpu" 2>&1 | tee "$out/deit_s_gpu.log"
rm -rf "$out/deit_s_gpu/work"  # the ONNX files of the variants: large, and not part of the report
python3 -m vitcompress.benchmarks.tokens_bench --gpu --report "$out" 2>&1 | tee "$out/tokens_gpu.log"  # -> $out/vitl_gpu/
