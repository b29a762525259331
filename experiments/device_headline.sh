#!/usr/bin/env bash
# The headline sweep on one accelerator machine, as one prepared call.
#
#   bash experiments/device_headline.sh CONFIG_ARG SHARDS LIMIT_S OUT_DIR
#
# Runs untapped-sweep --config experiments/configs/poster.py:CONFIG_ARG in SHARDS
# processes sharing the accelerator (each trains whole populations: a variant's seeds
# vmapped in one step; points are seed-major, so whatever finishes
# inside LIMIT_S seconds is paired across variants), then writes the sweep tables
# and packs each run's small outputs into OUT_DIR/headline.tgz. Needs MNIST in
# $UNTAPPED_DATA_DIR; run folders go to runs/headline.
set -uo pipefail
arg=$1; shards=$2; limit=$3; out=$4
root=runs/headline
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
mkdir -p "$root" "$out"
python3 - <<'PY'
import os, time, ml_collections, jax
from untapped_jax.data import mnist
from untapped_jax.evaluate import evaluator
print("devices:", jax.devices(), flush=True)
d = mnist.load(ml_collections.ConfigDict(dict(source="folder", dir=os.environ["UNTAPPED_DATA_DIR"], tfds_data_dir="")))
for kind in ("logreg", "mlp"):
  t = time.time()
  print(kind, "evaluator test accuracy", evaluator.load_or_train_evaluator(d, kind=kind)[1],
        f"({time.time() - t:.0f} s)", flush=True)
PY
for ((i = 0; i < shards; i++)); do
  timeout "$limit" python3 -m untapped_jax.sweep --config "experiments/configs/poster.py:$arg" \
    --workdir "$root" --shard "$i" --num_shards "$shards" \
    --config.train.progress_bar=False --config.train.checkpoint_every=0 \
    > "$out/shard_$i.log" 2>&1 &
done
wait
python3 -m untapped_jax.sweep --config "experiments/configs/poster.py:$arg" --workdir "$root" \
  --report_only > "$out/sweep_report.log" 2>&1
cp "$root/sweep.md" "$root/sweep.csv" "$out/" 2>/dev/null
find "$root" \( -name results.json -o -name metrics.jsonl -o -name config.json \
  -o -name timing.json -o -name samples_grid.png -o -name inconsistency.png \) -print0 \
  | tar czf "$out/headline.tgz" --null -T -
tail -n 3 "$out"/shard_*.log
