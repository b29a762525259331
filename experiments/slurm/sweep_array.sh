#!/usr/bin/env bash
# A sweep as a SLURM job array: array task i of N trains the sweep's populations i, i + N, ...
# (untapped-sweep --shard/--num_shards). Submit from the project's root:
#
#   sbatch --array=0-3 experiments/slurm/sweep_array.sh \
#     "experiments/configs/poster.py:sweep=claim,recipe=authors,batch=100,steps=4000,seeds=10" \
#     runs/claim --config.data.label_only_batch_size=10 --max_population 2
#
# A requeued or resubmitted task skips finished points, and a population that another live
# task holds (workdir_lock) is skipped, not trained twice; once every task has ended, the
# last one's sweep.md is the whole table (or run the command with --report_only).
#SBATCH --job-name=untapped-sweep
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
if [[ $# -lt 2 || -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  echo "usage: sbatch --array=0-(N-1) $0 CONFIG[:ARG] WORKDIR [untapped-sweep flags]" >&2
  exit 2
fi
config="$1" workdir="$2"
shift 2
# Shards count from the array's first index, whatever --array started at.
shard=$((SLURM_ARRAY_TASK_ID - ${SLURM_ARRAY_TASK_MIN:-0}))
exec untapped-sweep --config "$config" --workdir "$workdir" \
  --shard "$shard" --num_shards "${SLURM_ARRAY_TASK_COUNT:?set by sbatch --array}" "$@"
