"""data/splits.py on the splits of the authors' recipe: every labeled image of the labeled
classes, an unlabeled pool that includes them (capped in the seed's order), one label-only
label per class.

Splits are checked against index sets computed here from images that spell their own index.
"""

import numpy as np
import pytest

from untapped_jax import rng as rng_lib
from untapped_jax.configs import default
from untapped_jax.data import mnist as mnist_lib
from untapped_jax.data import splits as splits_lib

from real_mnist import REAL_DATA_DIR as DATA_DIR  # real digits or skip
from real_mnist import needs_mnist
from repo_files import POSTER
from repo_files import load_module

poster = load_module(POSTER, "poster_config_for_splits")


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


@pytest.mark.parametrize("seed", [0, 2])
def test_label_only_sources_with_every_image_of_0_to_4_labeled(seed):
  # 'images' takes the labels of the images left over, none of 0-4 here; 'frequencies'
  # takes every non-validation image's label, so its class counts are the pool's.
  data = synthetic(seed)
  labels = data["train_labels"]
  by_source = {source: splits_lib.make_splits(
      data, data_config(labeled_per_class=-1, label_only_source=source), seed=seed)
      for source in ("images", "frequencies")}
  pool = non_validation(by_source["images"], data)
  assert np.bincount(by_source["frequencies"].label_only.labels, minlength=10).tolist() == \
      np.bincount(labels[pool], minlength=10).tolist()
  assert sorted(by_source["images"].label_only.labels.tolist()) == sorted(
      labels[i] for i in pool if labels[i] >= 5)
  assert by_source["frequencies"].label_only.images is None


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


