"""The authors' recipe: poster.py's recipe=authors, the splits, optimizer, stream
weights, fixed label-only z, initialiser and Concrete classification loss it uses,
and one real run of it.

Splits are checked against index sets computed here from images that spell their
own index; the optimizer against Adam's first step worked out by hand; the
Concrete loss against its closed form with the same Gumbel draws.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from untapped_jax import models
from untapped_jax import objective
from untapped_jax import rng as rng_lib
from untapped_jax import train
from untapped_jax import train_state
from untapped_jax.configs import default
from untapped_jax.data import mnist as mnist_lib
from untapped_jax.data import splits as splits_lib

from real_mnist import REAL_DATA_DIR as DATA_DIR  # real digits or skip
from real_mnist import needs_mnist

from numpy_reference import NumpyM2

REPO = pathlib.Path(__file__).resolve().parents[1]
POSTER = REPO / "experiments" / "configs" / "poster.py"


def load_poster():
  spec = importlib.util.spec_from_file_location("poster_config_for_recipe", POSTER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


poster = load_poster()


def get(config, dotted):
  for part in dotted.split("."):
    config = config[part]
  return config


# ----------------------------------------------------------------------------- config


AUTHORS = [
    ("data.labeled_per_class", -1), ("data.unlabeled_includes_labeled", True),
    ("data.max_unlabeled", 20000), ("data.binarization", "none"),
    ("data.label_only_source", "classes"), ("data.label_only_batch_size", 10000),
    ("data.labeled_batch_size", 10000), ("data.unlabeled_batch_size", 10000),
    ("objective.label_smoothing", 0.95), ("model.latent_dim", 2),
    ("model.kernel_init", "normal"), ("model.init_stddev", 1e-3),
    ("objective.stream_weighting", "batch_mean"), ("objective.labeled_weight", 0.1),
    ("objective.unlabeled_weight", 0.1), ("objective.classification_weight", 1.0),
    ("objective.label_only_weight", 0.1), ("objective.classification_temperature", 1.0),
    ("objective.label_only", "sleep"), ("objective.sleep_terms", ("log_p_x",)),
    ("objective.label_only_z", "fixed"), ("objective.label_only_num_samples", 1),
    ("train.learning_rate", 1e-3), ("train.adam_eps", 1e-4),
    ("train.clip_global_norm", 5.0), ("train.clip_value", 1.0), ("train.num_steps", 4004),
    ("model_name", "untapped"), ("data.labeled_classes", (0, 1, 2, 3, 4)),
]


@pytest.mark.parametrize("key,value", AUTHORS)
def test_authors_recipe_sets(key, value):
  got = get(poster.get_config("recipe=authors"), key)
  assert (tuple(got) if isinstance(value, tuple) else got) == value, key


def test_ours_recipe_keeps_the_defaults():
  c = poster.get_config("recipe=ours")
  assert c.data.labeled_per_class == 100 and c.data.binarization == "dynamic"
  assert c.objective.stream_weighting == "dataset" and c.objective.label_only == "bound"
  assert c.train.clip_global_norm == 0.0 and c.objective.label_only_z == "prior"


@pytest.mark.parametrize("arg,key,value", [
    ("batch=50", "data.labeled_batch_size", 50), ("batch=50", "data.unlabeled_batch_size", 50),
    ("batch=50", "data.label_only_batch_size", 50), ("steps=123", "train.num_steps", 123),
    ("label_only=consistency", "objective.label_only", "consistency"),
    ("lam=0.5", "objective.label_only_weight", 0.5),
    ("lam=0", "objective.label_only_weight", 0.0),
    ("model=m2", "model_name", "m2"),
])
def test_authors_recipe_overrides(arg, key, value):
  assert get(poster.get_config(f"recipe=authors,{arg}"), key) == value


@pytest.mark.parametrize("arg,named", [
    ("recipe=foo", "recipe='foo'"), ("recipe=authors,per_class=0", "per_class=0"),
    ("per_class=-2", "per_class=-2"), ("recipe=authors,batch=-1", "batch=-1"),
    ("steps=-5", "steps=-5"), ("batch=1.5", "batch=1.5"),
])
def test_bad_values_are_named(arg, named):
  with pytest.raises(ValueError) as e:
    poster.get_config(arg)
  assert named in str(e.value)


# ----------------------------------------------------------------------------- splits


N_TRAIN = 600


def synthetic(seed=0):
  """Train images that spell their index in the first two bytes; random labels."""
  rng = np.random.default_rng(seed)
  idx = np.arange(N_TRAIN)
  images = np.zeros((N_TRAIN, 784), np.uint8)
  images[:, 0], images[:, 1] = idx & 255, idx >> 8
  return {"train_images": images, "train_labels": rng.integers(0, 10, N_TRAIN).astype(np.uint8),
          "test_images": np.zeros((5, 784), np.uint8),
          "test_labels": np.arange(5).astype(np.uint8)}


def index_of(split):
  return split.images[:, 0].astype(np.int64) | (split.images[:, 1].astype(np.int64) << 8)


def data_config(**overrides):
  d = default.get_config().data
  d.update(dict(num_validation=100, labeled_classes=(0, 1, 2, 3, 4)), **overrides)
  return d


def non_validation(splits, data):
  val = set(index_of(splits.validation).tolist())
  return [i for i in range(len(data["train_labels"])) if i not in val]


@pytest.mark.parametrize("seed", [0, 3])
def test_all_labeled_takes_every_non_validation_image_of_the_classes(seed):
  data = synthetic(seed)
  splits = splits_lib.make_splits(data, data_config(labeled_per_class=-1), seed=seed)
  labels = data["train_labels"]
  expected = {i for i in non_validation(splits, data) if labels[i] < 5}
  got = index_of(splits.labeled)
  assert sorted(got.tolist()) == sorted(expected)
  np.testing.assert_array_equal(splits.labeled.labels, labels[got])
  # Without unlabeled_includes_labeled, the unlabeled set is disjoint: digits 5-9 only.
  assert not set(index_of(splits.unlabeled).tolist()) & expected
  assert set(splits.unlabeled.labels.tolist()) <= {5, 6, 7, 8, 9}


@pytest.mark.parametrize("unlabeled_classes", [tuple(range(10)), (1, 6, 7)])
def test_unlabeled_includes_labeled(unlabeled_classes):
  data = synthetic(1)
  config = data_config(labeled_per_class=-1, unlabeled_includes_labeled=True,
                       unlabeled_classes=unlabeled_classes)
  splits = splits_lib.make_splits(data, config, seed=1)
  labels = data["train_labels"]
  expected = {i for i in non_validation(splits, data) if labels[i] in unlabeled_classes}
  got = index_of(splits.unlabeled).tolist()
  assert len(got) == len(set(got)) and set(got) == expected
  overlap = set(got) & set(index_of(splits.labeled).tolist())
  assert overlap == {i for i in expected if labels[i] < 5} and overlap


@pytest.mark.parametrize("cap", [1, 37, 200])
def test_max_unlabeled_caps_the_overlapping_pool_in_seeded_order(cap):
  # data_test covers caps of the disjoint pool; this is the pool that includes the
  # labeled images (the authors' split).
  data = synthetic(2)
  config = data_config(labeled_per_class=-1, unlabeled_includes_labeled=True,
                       max_unlabeled=cap)
  splits = splits_lib.make_splits(data, config, seed=5)
  # The pool is the seed's permutation past the validation images, in that order.
  pool = rng_lib.numpy_rng(5, rng_lib.Stream.SPLITS).permutation(N_TRAIN)[100:]
  np.testing.assert_array_equal(index_of(splits.unlabeled), pool[:cap])
  assert len(splits.unlabeled) == cap


@pytest.mark.parametrize("classes", [tuple(range(10)), (2, 5, 7), (9,)])
def test_label_only_classes_gives_one_label_per_class(classes):
  splits = splits_lib.make_splits(
      synthetic(), data_config(label_only_source="classes", label_only_classes=classes),
      seed=0)
  assert splits.label_only.labels.tolist() == list(classes)
  assert splits.label_only.images is None
  assert splits.label_only.labels.dtype == np.int32


@pytest.mark.parametrize("source", ["class", "IMAGES", ""])
def test_unknown_label_only_source_is_named(source):
  with pytest.raises(ValueError, match=repr(source)):
    splits_lib.make_splits(synthetic(), data_config(label_only_source=source), seed=0)


@needs_mnist
def test_authors_splits_on_real_mnist_labels():
  real = mnist_lib.load_folder(DATA_DIR)
  idx = np.arange(60000)
  images = np.zeros((60000, 784), np.uint8)
  images[:, 0], images[:, 1], images[:, 2] = idx & 255, (idx >> 8) & 255, idx >> 16
  data = dict(real, train_images=images)
  splits = splits_lib.make_splits(data, poster.get_config("recipe=authors").data, seed=0)
  val = rng_lib.numpy_rng(0, rng_lib.Stream.SPLITS).permutation(60000)[:10000]
  labels = real["train_labels"]
  keep = np.ones(60000, bool)
  keep[val] = False
  assert len(splits.labeled) == int(np.sum(keep & (labels < 5)))
  assert len(splits.unlabeled) == 20000
  assert splits.label_only.labels.tolist() == list(range(10))


# ----------------------------------------------------------------------------- optimizer


def train_config(clip_global_norm=0.0, clip_value=0.0, lr=1e-3, eps=1e-4):
  return ml_collections.ConfigDict(dict(learning_rate=lr, adam_eps=eps,
                                        clip_global_norm=clip_global_norm,
                                        clip_value=clip_value))


GRAD = {"a": np.array([[6.0, -8.0], [0.002, 0.0]]), "b": np.array([1e-4, -3e-4])}


def hand_update(grad, g, v, lr, eps):
  leaves = {k: np.asarray(x, np.float64) for k, x in grad.items()}
  norm = np.sqrt(sum(np.sum(x ** 2) for x in leaves.values()))
  scale = min(1.0, g / norm) if g else 1.0
  out = {}
  for k, x in leaves.items():
    x = x * scale
    if v:
      x = np.clip(x, -v, v)
    # Adam's first step: m_hat = x, v_hat = x^2, so the update is -lr x / (|x| + eps).
    out[k] = -lr * x / (np.abs(x) + eps)
  return out


@pytest.mark.parametrize("g,v", [(0.0, 0.0), (5.0, 0.0), (0.0, 1.0), (5.0, 1.0), (20.0, 0.5)])
def test_make_optimizer_first_update_by_hand(g, v):
  tx = train_state.make_optimizer(train_config(g, v))
  params = {k: jnp.zeros_like(jnp.asarray(x, jnp.float32)) for k, x in GRAD.items()}
  grads = {k: jnp.asarray(x, jnp.float32) for k, x in GRAD.items()}
  updates, _ = tx.update(grads, tx.init(params), params)
  expected = hand_update(GRAD, g, v, lr=1e-3, eps=1e-4)
  for k in GRAD:
    np.testing.assert_allclose(np.asarray(updates[k]), expected[k], rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("key", ["clip_global_norm", "clip_value"])
def test_negative_clip_raises(key):
  with pytest.raises(ValueError, match=key):
    train_state.make_optimizer(train_config(**{key: -1.0}))


# ----------------------------------------------------------------------------- weights


def weights_for(arg="recipe=authors", **objective_overrides):
  c = poster.get_config(arg)
  c.objective.update(objective_overrides)
  return objective.stream_weights(c, num_labeled=300, num_unlabeled=700, num_label_only=10)


@pytest.mark.parametrize("a,b,c,d", [(0.1, 0.1, 1.0, 0.1), (2.0, 0.5, 3.0, 0.0)])
def test_batch_mean_weights_are_plain_coefficients(a, b, c, d):
  w = weights_for(labeled_weight=a, unlabeled_weight=b, classification_weight=c,
                  label_only_weight=d)
  assert (w.labeled, w.unlabeled, w.label_only) == (a, b, d)
  assert w.classification == pytest.approx(c / a)
  assert w.labeled * w.classification == pytest.approx(c)


def test_m2_forces_label_only_weight_to_zero():
  assert weights_for("recipe=authors,model=m2").label_only == 0.0
  assert weights_for("recipe=ours,model=m2").label_only == 0.0


def test_dataset_weights_by_hand():
  w = weights_for("recipe=ours", label_only_weight=0.5, classification_weight=1.0)
  assert (w.labeled, w.unlabeled) == (pytest.approx(0.3), pytest.approx(0.7))
  assert w.label_only == pytest.approx(0.5 * 10 / 1000)
  assert w.classification == pytest.approx(1000 / 300)


@pytest.mark.parametrize("name", ["batch", "Dataset"])
def test_unknown_stream_weighting_is_named(name):
  with pytest.raises(ValueError, match=repr(name)):
    weights_for(stream_weighting=name)


def test_fixed_label_only_z():
  c = poster.get_config("recipe=authors")
  c.objective.label_only_num_samples = 50
  c.model.latent_dim = 4
  z = objective.fixed_label_only_z(c, seed=3)
  assert z.shape == (10, 50, 4)
  np.testing.assert_array_equal(z, objective.fixed_label_only_z(c, seed=3))
  assert not np.allclose(z, objective.fixed_label_only_z(c, seed=4))
  assert abs(z.mean()) < 0.1 and abs(z.std() - 1.0) < 0.06  # 2000 draws of N(0, 1)
  c.objective.label_only_z = "prior"
  assert objective.fixed_label_only_z(c, seed=3) is None
  c.objective.label_only_z = "fixd"
  with pytest.raises(ValueError, match="'fixd'"):
    objective.fixed_label_only_z(c, seed=3)


# ----------------------------------------------------------------------------- init


@pytest.mark.slow
def test_normal_kernel_init_on_a_full_size_model():
  c = poster.get_config("recipe=authors").model
  model = models.build(c, seed=0)
  for layer in (model.classifier.net.layers[0], model.encoder.from_x):
    kernel = np.asarray(layer.kernel[...])
    assert kernel.shape == (784, 500)
    assert abs(kernel.std() - 1e-3) < 2e-5 and abs(kernel.mean()) < 1e-5
    np.testing.assert_array_equal(np.asarray(layer.bias[...]), 0.0)
  small = poster.get_config("recipe=authors").model
  small.update(hidden=(64,), init_stddev=0.05)
  kernel = np.asarray(models.build(small, seed=0).decoder.net.layers[-1].kernel[...])
  assert kernel.shape == (64, 784) and abs(kernel.std() - 0.05) < 1e-3
  small.update(kernel_init="lecun_normal")  # flax's default: std 1/sqrt(fan_in)
  lecun = np.asarray(models.build(small, seed=0).classifier.net.layers[0].kernel[...])
  assert lecun.std() == pytest.approx(1 / np.sqrt(784), rel=0.03)


@pytest.mark.parametrize("name", ["glorot", "Normal"])
def test_unknown_kernel_init_is_named(name):
  with pytest.raises(ValueError, match=repr(name)):
    models.kernel_initializer(name, 1e-3)


# ----------------------------------------------------------------------------- concrete


@pytest.fixture(scope="module")
def tiny_classifier():
  model = models.M2(num_pixels=5, num_classes=4, latent_dim=2, hidden=(6,),
                    activation="softplus", rngs=nnx.Rngs(2))
  x = (np.random.default_rng(0).random((3, 5)) < 0.5).astype(np.float32)
  return model, x, NumpyM2(model, "softplus").log_q_y_given_x(x)


def np_log_softmax(a):
  return a - np.logaddexp.reduce(a, -1, keepdims=True)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_concrete_log_prob_closed_form(tiny_classifier, temperature, seed):
  model, x, log_q = tiny_classifier
  y = np.eye(4, dtype=np.float32)[[2, 0, 3]]
  rng = jax.random.key(seed)
  g = np.asarray(jax.random.gumbel(rng, log_q.shape, jnp.float32), np.float64)
  expected = np.sum(y * np_log_softmax((log_q + g) / temperature), -1)
  got = objective.concrete_log_prob(model, jnp.asarray(x), jnp.asarray(y), rng,
                                    temperature=temperature)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4, atol=1e-4)


def test_concrete_sample_is_one_hot_at_low_temperature(tiny_classifier):
  model, x, log_q = tiny_classifier
  rng = jax.random.key(7)
  g = np.asarray(jax.random.gumbel(rng, log_q.shape, jnp.float32))
  # log s_k for every k, one label at a time with the same rng (same Gumbel draws).
  log_s = np.stack([np.asarray(objective.concrete_log_prob(
      model, jnp.asarray(x), jnp.asarray(np.eye(4, dtype=np.float32)[[k] * 3]), rng,
      temperature=0.01)) for k in range(4)], 1)
  s = np.exp(log_s)
  np.testing.assert_allclose(s.sum(1), 1.0, rtol=1e-4)
  np.testing.assert_array_equal(np.argmax(s, 1), np.argmax(log_q + g, 1))
  assert np.all(s.max(1) > 0.99)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
@needs_mnist
def test_authors_recipe_end_to_end(tmp_path):
  config = poster.get_config("recipe=authors,batch=50,runlocal")
  config.data.dir = DATA_DIR
  config.eval.evaluator_cache_dir = os.environ.get("UNTAPPED_CACHE_DIR", "") or str(
      tmp_path / "evaluators")
  assert config.eval.semantic
  train.train_and_evaluate(config, str(tmp_path / "run"))
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  for key in ("authors_permutation", "mlp_distinct_digits", "gate_passed",
              "test_log_q_y_direct"):
    assert key in results, key
  assert results["authors_permutation"][:5] == [0, 1, 2, 3, 4]
  assert results["split_sizes"]["label_only"] == 10
  labels = mnist_lib.load_folder(DATA_DIR)["train_labels"]
  validation = rng_lib.numpy_rng(config.seed, rng_lib.Stream.SPLITS).permutation(60000)[
      :config.data.num_validation]
  keep = np.ones(60000, bool)
  keep[validation] = False
  assert results["split_sizes"]["labeled"] == int(np.sum(keep & (labels < 5)))
  assert results["split_sizes"]["unlabeled"] == config.data.max_unlabeled
  assert np.isfinite(results["test_log_q_y_direct"]) and results["test_log_q_y_direct"] < 0
