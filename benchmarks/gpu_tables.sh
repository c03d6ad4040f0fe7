#!/usr/bin/env bash
# The GPU latency tables in one call, on a machine with an NVIDIA GPU, PyTorch (CUDA), timm, numpy
# and safetensors, from a copy of the checkout, with nothing installed and no package index:
#
#   bash benchmarks/gpu_tables.sh OUT [options of python -m vitcompress.benchmarks.gpu_tables]
#
# Writes OUT/<gpu-name>/gpu_tables.{md,json,png} (the PNG where matplotlib is installed; otherwise
# `python -m vitcompress.benchmarks.gpu_tables --replot OUT/<gpu-name>` draws it later), profile.txt
# with --profile, and OUT/gpu_tables.log. Copy OUT/<gpu-name>/ to benchmarks/results/<gpu-name>/.
set -euo pipefail
out=${1:?usage: gpu_tables.sh OUT [options]}
shift
cd "$(dirname "$0")/.."  # the checkout root: its vitcompress/ folder is the package
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print(torch.cuda.get_device_name())"
python3 -m vitcompress.benchmarks.gpu_tables --out "$out" "$@" 2>&1 | tee "$out/gpu_tables.log"
