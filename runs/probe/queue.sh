#!/usr/bin/env bash
# Ablations at 3000 steps, seed 0, poster split (run sequentially).
cd "$(dirname "$0")/../.."
run() { name=$1; shift
  [ -f runs/probe/$name/results.json ] && return
  UNTAPPED_DATA_DIR=/work/shared/data/mnist .venv/bin/untapped-train --config experiments/configs/poster.py:model=untapped \
    --workdir runs/probe/$name --config.train.num_steps=3000 --config.train.progress_bar=False \
    --config.train.checkpoint_every=0 "$@" > runs/probe/$name.log 2>&1; }
run m2 --config.model_name=m2
run untapped_uniform --config.objective.image_prior=uniform
run untapped_mean --config.objective.x_estimator=mean
run untapped_relaxed --config.objective.x_estimator=relaxed
run untapped_lambda10 --config.objective.label_only_weight=10.0
run untapped_lambda0.1 --config.objective.label_only_weight=0.1
