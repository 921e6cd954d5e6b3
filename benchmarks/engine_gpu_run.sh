#!/usr/bin/env bash
# The engine's GPU figures in one call, each step under its own time limit so that the whole run fits a budget:
# a random-weight checkpoint of CONFIG's shapes, then serve_load (cold start: /health time, first answer,
# 1/8/32 streaming clients), then generate_speed with the seconds left (decode at the given batch sizes, default
# batch 1 only, the roofline and a kernel profile of batch-1 steps). Every step writes its results into OUT as it
# goes; OUT gets eight files at most (the lead's device tool returns few).
# Usage: benchmarks/engine_gpu_run.sh CONFIG OUT SUFFIX TOTAL_SECONDS [BATCH ...]
# (on CPU with the tiny model: GENERATE_SPEED_ARGS="--prompt-tokens 64 --new-tokens 16" to fit its context)
set -u
config=$1 out=$2 suffix=$3 total=$4
shift 4
batches=${*:-1}
started=$(date +%s)
mkdir -p "$out"
left() { echo $((total - ($(date +%s) - started))); }
mark() { echo "$1 done at $(($(date +%s) - started)) s" >>"$out/times.txt"; }
device=$(python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
model=$(mktemp -d)/model
timeout 90 python benchmarks/random_chatglm3.py "$model" --config "$config" --format safetensors \
  --device "$device" >>"$out/times.txt" 2>&1
mark checkpoint
# generate_speed needs about 35 s after serve_load (its compilation of the step then comes from the compile cache).
timeout $(($(left) - 35)) python benchmarks/serve_load.py "$model" --results "$out" --suffix="$suffix" \
  --server-log "$out/server.log" >"$out/serve_load.log" 2>&1
mark serve_load
rm -rf "$model"
# shellcheck disable=SC2086  # the batch sizes and extra options are separate arguments
timeout $(($(left) - 2)) python benchmarks/generate_speed.py --config "$config" --variants wenzhen --profile \
  --batches $batches --results "$out" --suffix="$suffix" ${GENERATE_SPEED_ARGS:-} >"$out/generate_speed.log" 2>&1
mark generate_speed
