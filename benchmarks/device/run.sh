#!/usr/bin/env bash
# The one device call: everything the GPU figures need, in one command (device tool:
#   run(command="bash benchmarks/device/run.sh", carry=[".whl"], timeout_s=540)).
# Installs the carried wheels, then measures on the accelerator, writing under $OUT:
# - the Ribeiro ResNet and the ViT-S/1d, bf16, fed by the real pipeline from a packed dataset
#   beside device-resident batches (step time, MFU, input bottleneck);
# - the ResNet's train step alone at batch 256 (benchmarks/train_step.py, JAX only).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
for model in ribeiro_resnet vit1d; do
  timeout 200 python3 benchmarks/device_feed.py --model "$model" --batch-size 256 --steps 20 \
    --rounds 3 --workers 12 --num-exams 4096 --workdir /tmp/ecgfm_device \
    --json "$OUT/feed_$model.json" \
    2>&1 | tee "$OUT/feed_$model.txt"
done
timeout 120 python3 benchmarks/train_step.py --frameworks jax --batch-size 256 --steps 10 \
  --rounds 3 --threads 16 2>&1 | tee "$OUT/train_step.txt"
