"""Class-subset splits of MNIST, deterministic in the seed.

Order of carving (so that changing one size never reshuffles the others' pools):
  1. `num_validation` images held out of the 60k training images;
  2. `labeled_per_class` images of each class in `labeled_classes` (-1: all of them);
  3. the unlabeled set: the remaining training images of `unlabeled_classes`
     (with `unlabeled_includes_labeled`, all non-validation images of those classes,
     labeled ones included, in a seeded random order), optionally capped at
     `max_unlabeled`;
  4. label-only labels: with label_only_source='images', labels (no images) of the
     remaining training images of `label_only_classes` (those neither labeled nor held
     out), capped at `max_label_only`: MNIST's class frequencies only while every class
     keeps unlabeled images; a class labeled in full (labeled_per_class=-1) gets none.
     With 'frequencies', the labels of every non-validation training image of those
     classes, labeled ones included: MNIST's class frequencies whatever is labeled
     (label-only data are labels, so no image is shared). With 'classes', each class once.
Unless `unlabeled_includes_labeled`, the labeled and unlabeled sets never share an image.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import logging
import numpy as np

from untapped_jax import rng as rng_lib


@dataclasses.dataclass(frozen=True)
class Split:
  """images uint8 [N, 784] (None for label-only data) and labels int32 [N].

  `indices` int64 [N]: the images' rows in MNIST's training images (None for the
  test and label-only splits), so a device-resident copy of those can be indexed.
  """
  images: np.ndarray | None
  labels: np.ndarray
  indices: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.labels)

  def class_counts(self, num_classes: int = 10) -> list[int]:
    return np.bincount(self.labels, minlength=num_classes).tolist()


@dataclasses.dataclass(frozen=True)
class Splits:
  labeled: Split
  unlabeled: Split  # labels kept for diagnostics only; training never reads them
  label_only: Split
  validation: Split
  test: Split

  @property
  def train_images(self) -> np.ndarray:
    """Every training image the model sees (labeled, then unlabeled): uint8 [N, 784]."""
    return np.concatenate([self.labeled.images, self.unlabeled.images])

  def sizes(self) -> dict[str, int]:
    return {f.name: len(getattr(self, f.name)) for f in dataclasses.fields(self)}


LABEL_ONLY_SOURCES = ("images", "frequencies", "classes")


def _check_classes(name: str, classes: Sequence[int]) -> tuple[int, ...]:
  classes = tuple(int(c) for c in classes)
  bad = [c for c in classes if not 0 <= c <= 9]
  if not classes or bad or len(set(classes)) != len(classes):
    raise ValueError(f"data.{name}={classes}: expected distinct digits in 0-9, at least one.")
  return classes


def _cap(indices: np.ndarray, cap: int) -> np.ndarray:
  return indices if cap is None or cap < 0 else indices[:cap]


def check_config(config: Any, *, num_train: int = 60000) -> None:
  """The checks of the `data` ConfigDict that need no images (run at start-up)."""
  if not 0 <= int(config.num_validation) < num_train:
    raise ValueError(f"data.num_validation={config.num_validation}: expected 0 <= n < "
                     f"{num_train}.")
  for name in ("labeled_classes", "unlabeled_classes", "label_only_classes"):
    _check_classes(name, config[name])
  per_class = int(config.labeled_per_class)
  if per_class < 1 and per_class != -1:
    raise ValueError(f"data.labeled_per_class={per_class}: expected a positive integer, "
                     "or -1 for every image of the labeled classes.")
  if config.label_only_source not in LABEL_ONLY_SOURCES:
    raise ValueError(f"data.label_only_source={config.label_only_source!r}; expected one of "
                     f"{LABEL_ONLY_SOURCES}.")
  for name in ("max_unlabeled", "max_label_only"):
    if config[name] == 0 or config[name] < -1:
      raise ValueError(f"data.{name}={config[name]} would leave that stream empty; expected "
                       "-1 (no cap) or a positive cap.")


def make_splits(mnist: dict[str, np.ndarray], config: Any, *, seed: int) -> Splits:
  """Carves the splits named by `config` (the `data` ConfigDict) out of `mnist`."""
  labels = mnist["train_labels"].astype(np.int32)
  images = mnist["train_images"]
  check_config(config, num_train=len(labels))
  num_validation = int(config.num_validation)
  labeled_classes = _check_classes("labeled_classes", config.labeled_classes)
  unlabeled_classes = _check_classes("unlabeled_classes", config.unlabeled_classes)
  label_only_classes = _check_classes("label_only_classes", config.label_only_classes)
  per_class = int(config.labeled_per_class)
  source = config.label_only_source

  rng = rng_lib.numpy_rng(seed, rng_lib.Stream.SPLITS)
  order = rng.permutation(len(labels))
  validation, pool = order[:num_validation], order[num_validation:]

  labeled = []
  for c in labeled_classes:
    of_class = pool[labels[pool] == c]
    if len(of_class) < per_class:
      raise ValueError(f"data.labeled_per_class={per_class}: digit {c} has only "
                       f"{len(of_class)} training images left after validation.")
    labeled.append(of_class if per_class == -1 else of_class[:per_class])
  labeled = np.sort(np.concatenate(labeled))
  rest = pool[~np.isin(pool, labeled)]

  unlabeled_pool = pool if config.unlabeled_includes_labeled else rest
  unlabeled = _cap(unlabeled_pool[np.isin(labels[unlabeled_pool], unlabeled_classes)],
                   config.max_unlabeled)
  if source == "classes":
    label_only_labels = np.asarray(label_only_classes, np.int32)
  else:
    source_pool = pool if source == "frequencies" else rest
    label_only_labels = labels[_cap(source_pool[np.isin(labels[source_pool], label_only_classes)],
                                    config.max_label_only)]

  def take(idx):
    return Split(images[idx], labels[idx], indices=idx)

  splits = Splits(
      labeled=take(labeled), unlabeled=take(unlabeled),
      label_only=Split(None, label_only_labels), validation=take(validation),
      test=Split(mnist["test_images"], mnist["test_labels"].astype(np.int32)))
  for f in dataclasses.fields(splits):
    split = getattr(splits, f.name)
    logging.info("split %-10s %6d examples, class counts %s", f.name, len(split),
                 split.class_counts())
  return splits
