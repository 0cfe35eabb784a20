#!/usr/bin/env bash
# The GPU checks to run before resolving an issue that touches a GPU path, on the
# GPU machine, from the repo root: the `gpu`-marked tests, the sample shot on cuda:0,
# and a farm round trip with `render worker --gpus all`. Logs go to ${OUT:-/tmp/ff-gpu}.
# SKIP_GPU_TESTS=1 leaves out the tests (run them in a call of their own: ~7 minutes).
set -uo pipefail
out=${OUT:-/tmp/ff-gpu}
mkdir -p "$out"
scratch=$(mktemp -d)
nvidia-smi -L > "$out/nvidia-smi.txt" 2>&1
if [ -z "${SKIP_GPU_TESTS:-}" ]; then
  python3 -m pytest -q -m gpu tests/ -p no:cacheprovider > "$out/gpu_tests.log" 2>&1
  echo "gpu tests: rc=$?" | tee -a "$out/summary.txt"
fi
python3 -m pipeline.cli run samples/demo.toml --device cuda:0 --output-root "$scratch/demo" \
  > "$out/demo.log" 2> "$out/demo.err"
echo "demo on cuda:0: rc=$?" | tee -a "$out/summary.txt"
python3 -m pipeline.cli verify "$scratch/demo" >> "$out/demo.log" 2>&1
echo "demo verify: rc=$?" | tee -a "$out/summary.txt"
python3 -m pipeline.cli watermark verify "$scratch/demo/demo/demo.0001.png" >> "$out/demo.log" 2>&1
echo "demo watermark: rc=$?" | tee -a "$out/summary.txt"
python3 -m pipeline.cli watermark verify "$scratch/demo/demo.mp4" >> "$out/demo.log" 2>&1
echo "demo watermark in the MP4: rc=$?" | tee -a "$out/summary.txt"
python3 benchmarks/watermark_gpu.py --out "$out/watermark_gpu.json" > "$out/watermark_gpu.log" 2>&1
echo "watermark embed at 4K: rc=$?" | tee -a "$out/summary.txt"
queue="sqlite:///$scratch/farm.db"
python3 -m pipeline.cli submit samples/demo.toml --queue "$queue" --chunk 8 > "$out/farm.log" 2>&1
timeout 300 python3 -m pipeline.cli worker --queue "$queue" --gpus all --output-root "$PWD" \
  --model-root "$PWD/samples" --exit-when-idle >> "$out/farm.log" 2>&1
echo "farm worker --gpus all: rc=$?" | tee -a "$out/summary.txt"
python3 -m pipeline.cli status --queue "$queue" --json >> "$out/farm.log" 2>&1
python3 -m pipeline.cli verify "$PWD/renders/demo" >> "$out/farm.log" 2>&1
echo "farm verify: rc=$?" | tee -a "$out/summary.txt"
rm -rf "$scratch" "$PWD/renders/demo"
