#!/usr/bin/env bash
# GPU smoke run (one GPU, < 8 minutes on an H200): SFT, RM, CM and 5 PPO-Lag iterations with
# 256-token responses in bf16 on a ~0.4 B Qwen2-style model built from a config (random weights),
# generation with HF and vLLM (when installed), training throughput and MFU.
# Writes OUT/gpu_smoke.json after every phase; prints each phase as it finishes.
#   benchmarks/gpu_smoke.sh [OUT]            (default OUT: runs/gpu_smoke)
#   benchmarks/gpu_smoke.sh OUT --tiny       (CPU check of the driver)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:-runs/gpu_smoke}"
shift || true
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$HERE/../src${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec "$PY" "$HERE/gpu_smoke.py" --out "$OUT" "$@"
