#!/usr/bin/env bash
# The accelerator check of issue 7, as one prepared call on a lent GPU machine:
#
#   bash experiments/device_check.sh LIMIT_S OUT_DIR
#
# 1. installs the project from wheels carried with the tree (.whl/, see below) into
#    the machine's Python, which already has jax with CUDA;
# 2. runs the population tests on the device;
# 3. runs benchmarks/throughput.py (JAX steps, vmapped populations of 1-8);
# 4. trains the converged M2 benchmark: 5 label draws (seeds) at 100 and at 3000
#    labels, each as one population, side by side, for what is left of LIMIT_S;
# and copies the logs, the benchmark's JSON and the runs' small files to OUT_DIR.
# Carry .whl (pip download --only-binary=:all: ml_collections flax optax orbax-checkpoint
# ... -d .whl) and .mnist (a copy of the MNIST IDX files) with the tree.
set -uo pipefail
limit=$1; out=$2
start=$(date +%s)
export UNTAPPED_DATA_DIR="$PWD/.mnist" XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
mkdir -p "$out"
python3 -m pip install -q --no-index --find-links .whl --no-deps -e . > "$out/install.log" 2>&1
python3 -c "import jax; print(jax.devices())" | tee "$out/devices.txt"
python3 -m pytest -q -x tests/population_test.py > "$out/tests.log" 2>&1; tail -n 2 "$out/tests.log"
python3 benchmarks/throughput.py --json --notorch --populations=1,2,4,8 \
  --unlabeled_batch=200 > "$out/throughput.txt" 2>&1; tail -n 12 "$out/throughput.txt"
left=$((limit - ($(date +%s) - start) - 60))
for labels in 100 3000; do
  python3 -m untapped_jax --config "experiments/configs/m2_benchmark.py:labels=$labels" \
    --workdir "runs/m2_converged_gpu/labels_$labels" --config.num_seeds=5 \
    --config.train.num_steps=10000000 --config.train.time_limit_s=$((left - 120)) \
    --config.train.eval_every=5000 --config.train.log_every=1000 \
    --config.train.checkpoint_every=0 --config.train.progress_bar=False \
    > "$out/m2_$labels.log" 2>&1 &
done
wait
find runs/m2_converged_gpu \( -name results.json -o -name metrics.jsonl -o -name 'summary.*' \
  -o -name timing.json -o -name config.json \) -print0 | tar czf "$out/m2_converged_gpu.tgz" --null -T -
cat runs/m2_converged_gpu/labels_*/summary.md 2>/dev/null
