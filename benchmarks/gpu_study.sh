#!/usr/bin/env bash
# The GPU study (benchmarks/reproduction.py --device cuda --preset gpu-5min) in ONE call of
# the device tool: one H100, no network, finished within about 9 minutes, report under $OUT.
#
# Here, once: bash benchmarks/fetch_device_wheels.sh (the wheels below into .whl/, which
# .git/info/exclude must list: never commit them). Then, from the repository root:
#   device run: command "bash benchmarks/gpu_study.sh", carry [".whl"], timeout_s 600
# Extra arguments go to the driver (e.g. --ablations no-head,monotone-head: about 40 s each).
#
# The device image has torch, accelerate, transformers, einops, click, rich, pyyaml,
# safetensors, matplotlib, tensorboard, torchmetrics, torchvision, huggingface-hub (1.33 >=
# diffusers' 1.32), filelock, regex, requests, numpy and pillow; it lacks diffusers. av is
# not needed: only `cameo sample`'s video and `cameo prepare re10k` import it (lazily), and
# the study runs neither; importlib_metadata is only for Python < 3.8 (the image has 3.12).
# wheel: diffusers==0.42.1
#
# Comes back in $OUT: report.json, study.log (the driver's console), gpu.csv (GPU use every
# 5 s: is it launch-bound?), precision_vs_psnr.png, val_psnr.png and val_psnr_x0.png (seeds as
# bands, reference lines dashed), logs.tar.gz (every run's log and metrics.jsonl).
set -uo pipefail
: "${OUT:?run through the device tool, which sets OUT}"
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# cameo itself, for its entry points (the backbones and alignments); code runs from this tree
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --upgrade --target /tmp/site . || exit 1
nvidia-smi -L
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 5 >"$OUT/gpu.csv" &
monitor=$!
study=/tmp/gpu-study
# 8 minutes for the study, the rest for the copies; the driver resumes if run again
timeout 480 python3 benchmarks/reproduction.py --device cuda --preset gpu-5min \
    --out "$study" "$@" 2>&1 | tee "$OUT/study.log"
echo "driver exit: ${PIPESTATUS[0]}" | tee -a "$OUT/study.log"
kill "$monitor"
cp "$study/report.json" "$study/precision_vs_psnr.png" "$OUT/" 2>/dev/null
cp "$study/compare/val_psnr.png" "$study/compare/val_psnr_x0.png" "$OUT/" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$study" logs $(cd "$study" && ls runs/*/metrics.jsonl) \
    times.json 2>/dev/null
ls -la "$OUT"
