#!/usr/bin/env bash
# Ablations of Untapped on the poster split, seed 0, 4000 steps: each differs from
# runs/compare/untapped/seed_0 in one setting (run sequentially).
cd "$(dirname "$0")/../.."
run() { name=$1; shift
  [ -f runs/probe/$name/results.json ] && return
  UNTAPPED_DATA_DIR=/work/shared/data/mnist .venv/bin/untapped-train --config experiments/configs/poster.py:model=untapped \
    --workdir runs/probe/$name --config.train.num_steps=4000 --config.train.progress_bar=False \
    --config.train.checkpoint_every=0 "$@" > runs/probe/$name.log 2>&1; }
run untapped_lambda0.1 --config.objective.label_only_weight=0.1
run untapped_uniform --config.objective.image_prior=uniform
run untapped_mean --config.objective.x_estimator=mean
