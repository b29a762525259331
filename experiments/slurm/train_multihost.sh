#!/usr/bin/env bash
# One run (or one population) over several SLURM nodes: srun starts one process per task and
# jax.distributed.initialize() reads SLURM's variables itself (launch.initialize_distributed).
# Every process computes the same batches; only process 0 writes. The workdir must be on a
# filesystem that every node sees. Submit from the project's root:
#
#   sbatch --nodes=2 experiments/slurm/train_multihost.sh \
#     experiments/configs/poster.py:model=untapped,recipe=authors runs/authors_2nodes
#SBATCH --job-name=untapped-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-task=1
#SBATCH --time=04:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: sbatch --nodes=N $0 CONFIG[:ARG] WORKDIR [untapped-train flags]" >&2
  exit 2
fi
config="$1" workdir="$2"
shift 2
exec srun untapped-train --config "$config" --workdir "$workdir" "$@"
