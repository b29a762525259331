r"""Which network limits held-out accuracy: q(y|x), or the generative model's own p(y|x)?

  python experiments/posterior_accuracy.py --root SWEEP_WORKDIR [--num_samples 32] \
      [--out docs/results/heldout_tests/posterior_accuracy.md] RUN_DIR ...

RUN_DIRs are the run folders of ONE finished population of an `untapped-sweep` under
SWEEP_WORKDIR (in any order; e.g. the two seed folders trained together), whose
checkpoint is loaded with the parameters its results were computed with. For each run, on
the real test images, under the run's own MLP-evaluator permutation (dimension -> digit):
the accuracy of q(y|x) (the run's held-out accuracy, recomputed and checked against its
results.json), and of argmax_y p(y|x), the generative model's posterior with log p(x, y)
importance-sampled (evaluate/generative_posterior.py), on the held-out and on the seen
digits; the posterior's accuracy under its own best permutation; and how often the two
networks agree. M2's unlabeled term pulls q(y|x) towards p(y|x): if p(y|x) is no better,
the generative model is what limits held-out accuracy, not the classifier.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import ml_collections
import numpy as np

from untapped_jax import rng as rng_lib
from untapped_jax import saved_state
from untapped_jax import sweep
from untapped_jax import train_state as train_state_lib
from untapped_jax.data import mnist as mnist_lib
from untapped_jax.data import splits as splits_lib
from untapped_jax.data import streams as streams_lib
from untapped_jax.evaluate import generative_posterior
from untapped_jax.evaluate import semantic


def load_population(root: str, run_dirs: list[str]):
  """(graphdef, [params per run], [config per run]) of the population of exactly `run_dirs`."""
  configs = []
  for d in run_dirs:
    with open(os.path.join(d, "config.json")) as f:
      c = ml_collections.ConfigDict(json.load(f))
    c.model.hidden = tuple(c.model.hidden)
    configs.append(c)
  checkpoint_dir = sweep.population_checkpoint_dir(root, run_dirs)
  if not os.path.isdir(checkpoint_dir):
    raise SystemExit(f"posterior_accuracy: no checkpoint of the population {run_dirs} under "
                     f"{root!r} (expected {checkpoint_dir}); give every folder trained together.")
  created = [train_state_lib.create_train_state(c, seed=c.seed) for c in configs]
  graphdef = created[0][0]
  state = train_state_lib.stack([s for _, _, s in created])
  with saved_state.manager(checkpoint_dir) as m:
    state, best = saved_state.restore(m, state, saved_state.BestState.initial(state,
                                                                             len(configs)))
  params = [train_state_lib.unstack(state.params if c.train.select_by == "final"
                                    else best.params, i) for i, c in enumerate(configs)]
  return graphdef, params, configs


def run_row(graphdef, params, config, results: dict, data, *, num_samples: int) -> dict:
  splits = splits_lib.make_splits(data, config.data, seed=config.seed)
  # The test images exactly as the run's evaluation binarised them (evaluate/suite.py).
  suite_rng = rng_lib.key(config.seed, rng_lib.Stream.SUITE)
  x = np.asarray(streams_lib.binarize(splits.test.images, jax.random.fold_in(suite_rng, 0),
                                      mode=config.data.binarization))
  labels = np.asarray(splits.test.labels)
  posterior, classifier = generative_posterior.predictions(
      graphdef, params, x, rng_lib.key(config.seed, rng_lib.Stream.POSTERIOR_ANALYSIS),
      num_samples=num_samples)
  perm = np.asarray(results["mlp_semantic_permutation"])
  seen = tuple(config.data.labeled_classes)
  heldout = tuple(d for d in range(10) if d not in seen)
  q_heldout = semantic.permuted_accuracy(classifier, labels, perm, digits=heldout)
  if abs(q_heldout - results["mlp_heldout_accuracy"]) > 1e-9:
    raise SystemExit(f"posterior_accuracy: q(y|x)'s held-out accuracy {q_heldout:.4f} is not "
                     f"the run's {results['mlp_heldout_accuracy']:.4f}: wrong checkpoint?")
  mask = np.isin(labels, heldout)
  assignment = np.zeros((10, 10), np.int64)  # [dimension, digit] of the held-out images
  np.add.at(assignment, (posterior[mask], labels[mask]), 1)
  own_perm = semantic.closest_permutation(assignment + np.isin(np.arange(10), seen)[None] *
                                          np.eye(10, dtype=np.int64) * 10 ** 6)
  return {
      "seed": config.seed,
      "q_heldout": q_heldout,
      "p_heldout": semantic.permuted_accuracy(posterior, labels, perm, digits=heldout),
      "p_heldout_own_permutation": semantic.permuted_accuracy(posterior, labels, own_perm,
                                                              digits=heldout),
      "q_seen": semantic.permuted_accuracy(classifier, labels, perm, digits=seen),
      "p_seen": semantic.permuted_accuracy(posterior, labels, perm, digits=seen),
      "agreement_heldout": float(np.mean(posterior[mask] == classifier[mask])),
      "both_wrong_heldout": float(np.mean((perm[posterior[mask]] != labels[mask])
                                          & (perm[classifier[mask]] != labels[mask]))),
  }


COLUMNS = ("seed", "q_heldout", "p_heldout", "p_heldout_own_permutation", "q_seen", "p_seen",
           "agreement_heldout", "both_wrong_heldout")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("run_dirs", nargs="+")
  parser.add_argument("--root", required=True, help="the sweep's --workdir")
  parser.add_argument("--num_samples", type=int, default=32,
                      help="importance samples per (image, class)")
  parser.add_argument("--out", default="", help="also write the table here")
  args = parser.parse_args(argv)
  if args.num_samples < 1:
    parser.error(f"--num_samples={args.num_samples}; expected a positive integer.")
  run_dirs = [os.path.normpath(d) for d in args.run_dirs]
  graphdef, params, configs = load_population(args.root, run_dirs)
  data = mnist_lib.load(configs[0].data)
  lines = ["| run | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
  for d, p, c in zip(run_dirs, params, configs):
    with open(os.path.join(d, "results.json")) as f:
      row = run_row(graphdef, p, c, json.load(f), data, num_samples=args.num_samples)
    lines.append(f"| {os.path.relpath(d, args.root)} | " + " | ".join(
        str(row[k]) if k == "seed" else f"{row[k]:.4f}" for k in COLUMNS) + " |")
    print(lines[-1], flush=True)
  table = "\n".join(lines) + "\n"
  print(table)
  if args.out:
    with open(args.out, "a") as f:
      f.write(f"{args.root} (num_samples={args.num_samples})\n\n{table}\n")


if __name__ == "__main__":
  main()
