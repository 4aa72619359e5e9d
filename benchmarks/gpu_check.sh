#!/usr/bin/env bash
# The one GPU session script (issues 7 and 10): CUDA vs CPU bit-identity, then the benchmarks.
# Writes everything under ${OUT:-gpu_out}/. About 6-8 minutes on one H100/H200-class GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_out}"
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1
python -m pytest -m gpu -q -x tests/asim 2>&1 | tee "$out/pytest_gpu.txt" | tail -5
python benchmarks/bench_network.py --device cuda --models resnet18_cifar10 --images 1024 \
  2>&1 | tee "$out/bench_network_cifar.txt" | tail -12
python benchmarks/bench_network.py --device cuda --models resnet18_imagenet vit_b_32 \
  --backends triton --images 128 2>&1 | tee "$out/bench_network_imagenet.txt" | tail -12
python benchmarks/bench_engine.py --device cuda --settings adc8 adc6 noise --repeats 3 \
  --json "$out/results_cuda.json" 2>&1 | tee "$out/bench_engine_cuda.txt" | tail -8
