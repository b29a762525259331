#!/usr/bin/env bash
# Untapped with lambda = 0.1 over seeds 0-2 (seed 0 is runs/probe/untapped_lambda0.1),
# started once the M2 arm of runs/compare has finished.
cd "$(dirname "$0")/../.."
while pgrep -f "untapped-compare --workdir runs/compare --models m2" > /dev/null; do sleep 10; done
UNTAPPED_DATA_DIR=/work/shared/data/mnist .venv/bin/untapped-compare --workdir runs/compare_lambda0.1 \
  --models untapped --seeds 3 --config experiments/configs/poster.py --config.train.num_steps=4000 \
  --config.train.progress_bar=False --config.train.checkpoint_every=0 \
  --config.objective.label_only_weight=0.1
