"""The independent evaluators that judge generated digits: multinomial logistic
regression and a ReLU MLP trained on all 60k MNIST training labels, each from one frozen
recipe that is both its training arguments and its cache key, trained once per machine
and data and cached."""

from __future__ import annotations

import dataclasses
import hashlib
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from untapped_jax import files
from untapped_jax import workdir_lock
from untapped_jax.data import streams as streams_lib

NUM_DIGITS = 10
CACHE_ENV_VAR = "UNTAPPED_CACHE_DIR"
# A smoke knob for test suites: the MLP evaluator's 20 epochs are most of a CPU test
# session's fixed cost. The epochs are part of the recipe, hence of the cache key, and
# every run logs and records its evaluators' test accuracy, so a shortened evaluator is
# never mistaken for the real one. Never set for a study.
MLP_EPOCHS_ENV_VAR = "UNTAPPED_MLP_EVALUATOR_EPOCHS"


@dataclasses.dataclass(frozen=True)
class EvaluatorRecipe:
  """How an evaluator is trained. Adam on softmax cross-entropy + l2 * sum ||W||^2 over
  freshly binarised minibatches; hidden=() is logistic regression."""
  kind: str
  hidden: tuple[int, ...]
  num_epochs: int
  batch_size: int
  learning_rate: float
  l2: float
  seed: int = 0
  # Bump when the training code changes in a way the fields above do not show.
  version: int = 1

  def cache_key(self) -> str:
    """Every field, so the cached evaluator is always the one this recipe trains."""
    return ",".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))


RECIPES = {
    "logreg": EvaluatorRecipe(kind="logreg", hidden=(), num_epochs=15, batch_size=500,
                              learning_rate=1e-3, l2=1e-4),
    "mlp": EvaluatorRecipe(kind="mlp", hidden=(512, 512), num_epochs=20, batch_size=250,
                           learning_rate=1e-3, l2=1e-5),
}
EVALUATORS = tuple(RECIPES)


def evaluator_logits(params: dict[str, jax.Array], x: jax.Array) -> jax.Array:
  """x [..., 784] in [0, 1] -> digit logits [..., 10].

  Logistic regression for params {'w', 'b'}; a ReLU MLP for {'w0', 'b0', 'w1', ...}.
  """
  if "w" in params:
    return x @ params["w"] + params["b"]
  num_layers = len(params) // 2
  h = x
  for i in range(num_layers):
    h = h @ params[f"w{i}"] + params[f"b{i}"]
    if i < num_layers - 1:
      h = jax.nn.relu(h)
  return h


def _init_evaluator(recipe: "EvaluatorRecipe", num_pixels: int) -> dict[str, jax.Array]:
  if recipe.kind == "logreg":
    return {"w": jnp.zeros((num_pixels, NUM_DIGITS)), "b": jnp.zeros(NUM_DIGITS)}
  sizes = [num_pixels, *recipe.hidden, NUM_DIGITS]
  keys = jax.random.split(jax.random.key(recipe.seed), len(sizes) - 1)
  params = {}
  for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
    params[f"w{i}"] = jax.random.normal(keys[i], (a, b)) * np.sqrt(2.0 / a)
    params[f"b{i}"] = jnp.zeros(b)
  return params


def train_evaluator(images: np.ndarray, labels: np.ndarray, recipe: "EvaluatorRecipe"
                    ) -> dict[str, np.ndarray]:
  """Fits the evaluator of `recipe` on uint8 images [N, 784], labels [N].

  Each minibatch is freshly binarised (pixels ~ Bernoulli(intensity)), as the
  generated images it will judge are binary samples.
  """
  tx = optax.adam(recipe.learning_rate)
  params = _init_evaluator(recipe, images.shape[1])
  opt_state = tx.init(params)
  l2 = recipe.l2

  @jax.jit
  def step(params, opt_state, x_uint8, y, rng):
    x = streams_lib.binarize(x_uint8, rng, mode="dynamic")

    def loss_fn(p):
      ce = optax.softmax_cross_entropy_with_integer_labels(evaluator_logits(p, x), y)
      weights = [v for name, v in p.items() if name.startswith("w")]
      return ce.mean() + l2 * sum(jnp.sum(jnp.square(w)) for w in weights)

    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  batch_size = recipe.batch_size
  rng, key = np.random.default_rng(recipe.seed), jax.random.key(recipe.seed)
  for epoch in range(recipe.num_epochs):
    order = rng.permutation(len(labels))
    for i, start in enumerate(range(0, len(order) - batch_size + 1, batch_size)):
      idx = order[start:start + batch_size]
      params, opt_state = step(params, opt_state, images[idx], labels[idx].astype(np.int32),
                               jax.random.fold_in(key, epoch * 100000 + i))
  return jax.device_get(params)


def evaluator_accuracy(params, images: np.ndarray, labels: np.ndarray, *, seed: int = 0
                       ) -> float:
  """Accuracy on binarised uint8 images (one fixed Bernoulli draw)."""
  x = streams_lib.binarize(jnp.asarray(images), jax.random.key(seed), mode="dynamic")
  pred = jnp.argmax(evaluator_logits(params, x), -1)
  return float(jnp.mean(pred == jnp.asarray(labels)))


def load_or_train_evaluator(mnist: dict[str, np.ndarray], *, cache_dir: str | None = None,
                            kind: str = "logreg") -> tuple[dict[str, np.ndarray], float]:
  """The evaluator `kind` (RECIPES) for this MNIST, trained once and cached; returns
  (params, test accuracy).

  The cache file is keyed by a hash of the recipe itself (the arguments it trains with)
  and the training data, under `cache_dir` (default: $UNTAPPED_CACHE_DIR, else
  ~/.cache/untapped_jax).
  """
  if kind not in RECIPES:
    raise ValueError(f"evaluator kind={kind!r}; expected one of {EVALUATORS}.")
  recipe = RECIPES[kind]
  if kind == "mlp" and os.environ.get(MLP_EPOCHS_ENV_VAR):
    epochs = os.environ[MLP_EPOCHS_ENV_VAR]
    if not epochs.isdigit() or int(epochs) < 1:
      raise ValueError(f"{MLP_EPOCHS_ENV_VAR}={epochs!r}; expected a whole number >= 1.")
    recipe = dataclasses.replace(recipe, num_epochs=int(epochs))
  cache_dir = cache_dir or os.environ.get(CACHE_ENV_VAR) or os.path.join(
      os.path.expanduser("~"), ".cache", "untapped_jax")
  digest = hashlib.sha256(recipe.cache_key().encode() + mnist["train_images"].tobytes()
                          + mnist["train_labels"].tobytes())
  path = os.path.join(cache_dir, f"evaluator_{kind}_{digest.hexdigest()[:16]}.npz")
  # Processes sharing the cache (a sweep's shards, parallel test workers) wait for the
  # first to train it instead of all training the same evaluator.
  with workdir_lock.hold(cache_dir, wait=True):
    if os.path.exists(path):
      with np.load(path) as f:
        params = {name: f[name] for name in f.files}
    else:
      params = train_evaluator(mnist["train_images"], mnist["train_labels"], recipe)
      with files.atomic_path(path) as tmp:
        np.savez(tmp, **params)
  accuracy = evaluator_accuracy(params, mnist["test_images"], mnist["test_labels"])
  logging.info("evaluator (%s, %s): MNIST test accuracy %.4f", kind, path, accuracy)
  return params, accuracy
