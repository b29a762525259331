#!/usr/bin/env bash
# The accelerator check (issues 7 and 14) as one prepared call on a lent GPU machine:
#
#   bash experiments/device_check.sh LIMIT_S OUT_DIR [PEAK_TF32 PEAK_BF16]
#
# 1. installs the project from wheels carried with the tree (.whl/, see below) into
#    the machine's Python, which already has jax with CUDA;
# 2. runs the population tests on the device;
# 3. runs benchmarks/throughput.py four times: batch 100 (+200 unlabeled) with vmapped
#    populations S = 1 ... 64; batch 10,000 of each stream in float32 (the backend's
#    default matmul precision, TF32), in full float32 matmuls (model.matmul_precision=
#    float32) and in bfloat16 compute; each against the chip's datasheet peak (default: an
#    H200's dense TF32 495 and bfloat16 989 TFLOP/s), with the PyTorch peer where torch
#    has CUDA (under torch.autocast in the bfloat16 run);
# 4. trains the converged M2 benchmark: 5 label draws (seeds) at 100 and at 3000
#    labels, each as one population, side by side, for what is left of LIMIT_S, with
#    m2_benchmark.py's recipe M2_RECIPE (default ours; jonemeth: his ssl-vae recipe);
# and copies the logs, the benchmark's JSON and the runs' small files to OUT_DIR.
# M2_ONLY=1 skips 2. and 3. and gives the whole of LIMIT_S to 4.; M2_LABELS picks the
# label counts (default "100 3000"; one count gets the device to itself), e.g.
#   M2_ONLY=1 M2_RECIPE=jonemeth M2_LABELS=100 bash experiments/device_check.sh 560 OUT
# Carry .whl (pip download --only-binary=:all: ml_collections flax optax orbax-checkpoint
# ... -d .whl) and .mnist (a copy of the MNIST IDX files) with the tree.
# TINY=1 shrinks every step to seconds, to try the script on a CPU first.
set -uo pipefail
limit=$1; out=$2; peak32=${3:-495}; peak16=${4:-989}
start=$(date +%s)
export UNTAPPED_DATA_DIR="${UNTAPPED_DATA_DIR:-$PWD/.mnist}" XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1
tiny=(); runlocal=""; m2_steps=10000000; pops=1,2,4,8,16,32,64; big=10000; mm=8192
if [[ "${TINY:-0}" == 1 ]]; then
  tiny=(--tiny --steps=2); runlocal=",runlocal"; m2_steps=20; pops=1,2; big=16; mm=64
fi
left() { echo $((limit - ($(date +%s) - start))); }
mkdir -p "$out"
python3 -m pip install -q --no-index --find-links .whl --no-deps -e . > "$out/install.log" 2>&1
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee "$out/devices.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
  >> "$out/devices.txt" 2>&1
if [[ "${M2_ONLY:-0}" != 1 ]]; then
  python3 -m pytest -q -x tests/population_test.py > "$out/tests.log" 2>&1; tail -n 2 "$out/tests.log"
  bench() {  # NAME FLAGS...: one benchmark run, cut off before the M2 runs' share of LIMIT_S
    local name=$1; shift
    timeout $(( $(left) / 3 )) python3 benchmarks/throughput.py --json "${tiny[@]}" \
      --matmul_size=$mm "$@" > "$out/throughput_$name.txt" 2>&1
    tail -n 1 "$out/throughput_$name.txt"
  }
  bench batch100 --populations=$pops --unlabeled_batch=200 --peak_tflops="$peak32"
  bench batch${big}_f32 --populations=1 --labeled_batch=$big --unlabeled_batch=$big \
    --peak_tflops="$peak32"
  bench batch${big}_f32full --populations=1 --labeled_batch=$big --unlabeled_batch=$big \
    --matmul_precision=float32 --peak_tflops="$peak32" --notorch
  bench batch${big}_bf16 --populations=1 --labeled_batch=$big --unlabeled_batch=$big \
    --compute_dtype=bfloat16 --peak_tflops="$peak16"
fi
m2_left=$(( $(left) - 60 ))
# Our recipe runs until the time limit; jonemeth's keeps its own length (3000 epochs) and
# rhythm (an evaluation every 10 epochs), so that a run that finishes ends where his log does.
m2_flags=(--config.train.num_steps=$m2_steps --config.train.log_every=1000
          --config.train.eval_every=$((m2_steps < 5000 ? m2_steps : 5000)))
if [[ "${M2_RECIPE:-ours}" == jonemeth && "${TINY:-0}" != 1 ]]; then m2_flags=(); fi
for labels in ${M2_LABELS:-100 3000}; do
  python3 -m untapped_jax --config "experiments/configs/m2_benchmark.py:labels=$labels,recipe=${M2_RECIPE:-ours}$runlocal" \
    --workdir "runs/m2_converged_gpu/labels_$labels" --config.num_seeds=5 \
    --config.train.time_limit_s=$((m2_left - 120)) "${m2_flags[@]}" \
    --config.train.checkpoint_every=0 --config.train.progress_bar=False \
    > "$out/m2_$labels.log" 2>&1 &
done
wait
find runs/m2_converged_gpu \( -name results.json -o -name metrics.jsonl -o -name 'summary.*' \
  -o -name timing.json -o -name config.json \) -print0 | tar czf "$out/m2_converged_gpu.tgz" --null -T -
cat runs/m2_converged_gpu/labels_*/summary.md 2>/dev/null
