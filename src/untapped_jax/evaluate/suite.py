"""Post-training evaluation of a run: semantics of y, label-only bound, figures."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from untapped_jax import files
from untapped_jax import objective
from untapped_jax import rng as rng_lib
from untapped_jax.bounds import untapped
from untapped_jax.data import streams as streams_lib
from untapped_jax.evaluate import likelihood
from untapped_jax.evaluate import evaluator as evaluator_lib
from untapped_jax.evaluate import semantic


GATE_SEEN_AGREEMENT = 0.9


def evaluate_run(config, workdir: str, *, graphdef, params, splits, mnist) -> dict[str, Any]:
  """Writes samples.npz and the figures; returns the results to merge into results.json."""
  kinds = ("logreg", "mlp") if config.eval.strong_evaluator else ("logreg",)
  evaluators, accuracies = {}, {}
  for kind in kinds:
    evaluators[kind], accuracies[kind] = evaluator_lib.load_or_train_evaluator(
        mnist, cache_dir=config.eval.evaluator_cache_dir or None, kind=kind)
  rng = rng_lib.key(config.seed, rng_lib.Stream.SUITE)
  test_x = np.asarray(streams_lib.binarize(
      splits.test.images, jax.random.fold_in(rng, 0), mode=config.data.binarization))
  labeled_x = np.asarray(streams_lib.binarize(
      splits.labeled.images, jax.random.fold_in(rng, 3), mode=config.data.binarization))
  seen = tuple(config.data.labeled_classes)
  data = semantic.EvaluationData(
      test_images=test_x, test_labels=splits.test.labels, seen_digits=seen,
      labeled_x=labeled_x,
      labeled_y=streams_lib.one_hot(splits.labeled.labels, config.model.num_classes))
  results, arrays = semantic.semantic_report(
      graphdef, params, evaluators, data, rng=jax.random.fold_in(rng, 1),
      num_per_class=config.eval.samples_per_class,
      ownership_threshold=config.eval.ownership_threshold)
  results["evaluator_test_accuracy"] = accuracies["logreg"]
  if "mlp" in accuracies:
    results["mlp_evaluator_test_accuracy"] = accuracies["mlp"]
  # The sanity gate before any semantic claim: the labeled digits' own dimensions must
  # generate them recognisably (under the strongest evaluator at hand).
  gate_key = "mlp_seen_agreement" if "mlp" in accuracies else "seen_agreement"
  results["gate_seen_agreement"] = results[gate_key]
  results["gate_passed"] = bool(results[gate_key] >= GATE_SEEN_AGREEMENT)

  # Reported with the inverted bound's terms whatever objective trained the model.
  settings = objective.LabelOnlySettings.from_config(
      config.objective, pixel_probs=untapped.fit_pixel_bernoulli(splits.train_images)
  ).replace(objective="bound")
  results.update(likelihood.label_only_report(
      graphdef, params, settings, test_labels=splits.test.labels,
      rng=jax.random.fold_in(rng, 2), num_samples=config.eval.label_only_num_samples))

  with files.atomic_path(os.path.join(workdir, "samples.npz")) as tmp:
    np.savez_compressed(tmp, **arrays)
  # Imported here: matplotlib is ~0.4 s of every launch's start, and only this draws.
  from untapped_jax.evaluate import figures  # pylint: disable=g-import-not-at-top
  name = f"{config.model_name} (seed {config.seed})"
  figures.sample_grid(arrays["x_mean"], results["majority_digits"],
                      results["duplicated_digits"], os.path.join(workdir, "samples_grid.png"),
                      title=f"{name}: {results['distinct_digits']} distinct digits")
  figures.inconsistency_figure(arrays["x"], arrays["model_digits"],
                               os.path.join(workdir, "inconsistency.png"),
                               title=f"{name}: self-consistency "
                                     f"{results['self_consistency']:.0%}")
  return results


def make_semantic_probe(config, *, graphdef, splits, mnist):
  """params -> a few semantic figures under the strongest evaluator, for learning curves.

  The same samples' noise (a fixed key) at every call, so changes come from the model.
  """
  kind = "mlp" if config.eval.strong_evaluator else "logreg"
  evaluator, _ = evaluator_lib.load_or_train_evaluator(
      mnist, cache_dir=config.eval.evaluator_cache_dir or None, kind=kind)
  rng = rng_lib.key(config.seed, rng_lib.Stream.SEMANTIC_PROBE)
  test_x = np.asarray(streams_lib.binarize(
      splits.test.images, jax.random.fold_in(rng, 0), mode=config.data.binarization))
  data = semantic.EvaluationData(test_images=test_x, test_labels=splits.test.labels,
                                 seen_digits=tuple(config.data.labeled_classes))

  def probe(params):
    results, _ = semantic.semantic_report(
        graphdef, params, {kind: evaluator}, data, rng=jax.random.fold_in(rng, 1),
        num_per_class=config.eval.samples_per_class,
        ownership_threshold=config.eval.ownership_threshold)
    return {f"{kind}_{k}": results[k] for k in
            ("distinct_digits", "owned_digits", "matched_agreement", "seen_agreement",
             "heldout_accuracy", "dimension_digit_mi")}

  return probe
