#!/usr/bin/env bash
# The engine's GPU figures in one call, each step under its own time limit so that the whole run fits a budget:
# a random-weight checkpoint of CONFIG's shapes, then serve_load (cold start: /health time, first answer,
# 1/8/32 streaming clients), then generate_speed (the FlexAttention batch-1 variant; then the shipped engine's
# decode b1/b8/b32 and the roofline; kernel profiles of batch-1 steps) with the seconds left. Every step writes
# its results into OUT as it goes.
# Usage: benchmarks/engine_gpu_run.sh CONFIG OUT SUFFIX TOTAL_SECONDS [generate_speed options...]
set -u
config=$1 out=$2 suffix=$3 total=$4
shift 4
started=$(date +%s)
mkdir -p "$out"
left() { echo $((total - ($(date +%s) - started))); }
mark() { echo "$1 done at $(($(date +%s) - started)) s" | tee -a "$out/times.txt"; }
device=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
model=$(mktemp -d)/model
timeout 90 python benchmarks/random_chatglm3.py "$model" --config "$config" --format safetensors \
  --device "$device" >"$out/random_checkpoint.log" 2>&1
mark checkpoint
timeout $(($(left) * 55 / 100)) python benchmarks/serve_load.py "$model" --results "$out" --suffix="$suffix" \
  --server-log "$out/server.log" >"$out/serve_load.log" 2>&1
mark serve_load
rm -rf "$model"
# The FlexAttention batch-1 variant first, in its own process and under its own limit (the new lever; a slow or
# failing compilation cannot cost the shipped variant's figures), then the shipped engine with what is left.
timeout $(($(left) / 2)) python benchmarks/generate_speed.py --config "$config" --variants wenzhen-flex --profile \
  --results "$out" --suffix="$suffix-flex" "$@" >"$out/generate_speed-flex.log" 2>&1
mark generate_speed-flex
timeout $(($(left) - 5)) python benchmarks/generate_speed.py --config "$config" --variants wenzhen --profile \
  --results "$out" --suffix="$suffix" "$@" >"$out/generate_speed.log" 2>&1
mark generate_speed
