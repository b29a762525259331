"""Data layer on real MNIST: IDX reader, loader dispatch, splits and streams.

Real-data tests read the folder named by $UNTAPPED_DATA_DIR (the offline copy of
the four gzip IDX files); they are skipped, with that reason, when it is unset.
"""

import gzip
import hashlib
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from untapped_jax.configs import default
from untapped_jax.data import mnist
from untapped_jax.data import splits as splits_lib
from untapped_jax.data import streams

from real_mnist import REAL_DATA_DIR as DATA_DIR  # real digits or skip
from real_mnist import needs_mnist

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# MD5 of the uncompressed IDX files, from the data folder's README.
RAW_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
BASES = [base for _, base, _, _ in mnist.FILES]


def data_config(**overrides):
  d = default.get_config().data
  d.update(overrides)
  return d


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def real():
  if not DATA_DIR:
    pytest.skip(f"set ${mnist.ENV_VAR} to the folder with the four MNIST IDX files")
  return mnist.load(data_config(source="folder", dir=DATA_DIR))


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
  """The four IDX files decompressed into a temporary folder."""
  if not DATA_DIR:
    pytest.skip(f"set ${mnist.ENV_VAR} to the folder with the four MNIST IDX files")
  out = tmp_path_factory.mktemp("mnist_raw")
  for base in BASES:
    with gzip.open(os.path.join(DATA_DIR, base + ".gz"), "rb") as src, \
        open(out / base, "wb") as dst:
      shutil.copyfileobj(src, dst)
  return out


def raw_bytes(raw_dir, base):
  return (raw_dir / base).read_bytes()


def encode_index(n):
  """uint8 [n, 784] images whose first three bytes spell the row index."""
  images = np.zeros((n, mnist.NUM_PIXELS), np.uint8)
  idx = np.arange(n)
  images[:, 0], images[:, 1], images[:, 2] = idx & 255, (idx >> 8) & 255, idx >> 16
  return images


def decode_index(images):
  images = np.asarray(images).astype(np.int64)
  assert not images[:, 3:].any()
  return images[:, 0] | (images[:, 1] << 8) | (images[:, 2] << 16)


@pytest.fixture(scope="module")
def indexed(real):
  """Real MNIST labels with train images that name their own index."""
  return {"train_images": encode_index(60000), "train_labels": real["train_labels"],
          "test_images": real["test_images"], "test_labels": real["test_labels"]}


# --------------------------------------------------------------------------- reader


def test_real_mnist_shapes_dtypes_counts_and_pixels(real):
  assert set(real) == {"train_images", "train_labels", "test_images", "test_labels"}
  assert real["train_images"].shape == (60000, 784)
  assert real["test_images"].shape == (10000, 784)
  assert real["train_labels"].shape == (60000,)
  assert real["test_labels"].shape == (10000,)
  for v in real.values():
    assert v.dtype == np.uint8
  assert np.bincount(real["train_labels"], minlength=10).tolist() == TRAIN_COUNTS
  assert np.bincount(real["test_labels"], minlength=10).tolist() == TEST_COUNTS
  for split in ("train", "test"):
    images = real[f"{split}_images"]
    assert images.min() == 0 and images.max() == 255
    # MNIST's well-known mean intensity (0.1307 train, 0.1325 test).
    assert images.mean() / 255 == pytest.approx({"train": 0.1307, "test": 0.1325}[split],
                                                 abs=5e-4)
    # Borders are empty, the centre is ink: an image is not read with a wrong offset.
    squares = images.reshape(-1, 28, 28)
    assert squares[:, 0, :].mean() < 0.1 and squares[:, 14, 14].mean() > 60


def test_reader_returns_exactly_the_file_contents(real):
  # Header + arrays hash to the README's MD5 of the uncompressed files.
  for name, base, magic, count in mnist.FILES:
    header = magic.to_bytes(4, "big") + count.to_bytes(4, "big")
    if magic == mnist.IMAGE_MAGIC:
      header += (28).to_bytes(4, "big") * 2
    assert hashlib.md5(header + real[name].tobytes()).hexdigest() == RAW_MD5[base], name


def test_gzip_and_raw_folders_give_identical_arrays(real, raw_dir):
  assert sorted(os.listdir(raw_dir)) == sorted(BASES)  # no .gz in the raw folder
  from_raw = mnist.load_folder(str(raw_dir))
  assert set(from_raw) == set(real)
  for name in real:
    assert from_raw[name].dtype == real[name].dtype
    np.testing.assert_array_equal(from_raw[name], real[name])


# --------------------------------------------------------------------------- reader errors


def test_missing_folder(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(mnist.MnistError, match=re.escape(repr(str(missing))) + ".*does not exist"):
    mnist.load_folder(str(missing))
  a_file = tmp_path / "file"
  a_file.write_bytes(b"")
  with pytest.raises(mnist.MnistError, match="not a folder"):
    mnist.load_folder(str(a_file))


@needs_mnist
@pytest.mark.parametrize("missing", BASES)
def test_missing_file(tmp_path, missing):
  for base in BASES:
    if base != missing:
      os.symlink(os.path.join(DATA_DIR, base + ".gz"), tmp_path / (base + ".gz"))
  with pytest.raises(mnist.MnistError,
                     match=re.escape(f"{missing}.gz (or uncompressed {missing}) not found in "
                                     f"{str(tmp_path)!r}")):
    mnist.load_folder(str(tmp_path))


def test_short_header(tmp_path):
  path = tmp_path / "train-labels-idx1-ubyte"
  path.write_bytes(b"\x00\x00\x08")
  with pytest.raises(mnist.MnistError,
                     match=re.escape(f"{path}: 3 bytes, shorter than the 8-byte IDX header")):
    mnist.read_idx(str(path), magic=mnist.LABEL_MAGIC, count=60000)


@needs_mnist
def test_gzip_cut_file(tmp_path):
  base = "train-labels-idx1-ubyte"
  data = open(os.path.join(DATA_DIR, base + ".gz"), "rb").read()
  path = tmp_path / (base + ".gz")
  path.write_bytes(data[: len(data) // 2])
  with pytest.raises(mnist.MnistError,
                     match=re.escape(str(path)) + r": cannot read .*compressed with gzip"):
    mnist.read_idx(str(path), magic=mnist.LABEL_MAGIC, count=60000)


@needs_mnist
@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("base,magic,count,item", [
    ("t10k-images-idx3-ubyte", mnist.IMAGE_MAGIC, 10000, 784),
    ("train-labels-idx1-ubyte", mnist.LABEL_MAGIC, 60000, 1),
])
def test_raw_cut_and_trailing_bytes(tmp_path, raw_dir, compress, base, magic, count, item):
  data = raw_bytes(raw_dir, base)
  header = 16 if magic == mnist.IMAGE_MAGIC else 8
  expected = header + count * item
  assert len(data) == expected
  opener = (lambda p, m: gzip.open(p, m, compresslevel=1)) if compress else open
  for content, what in ((data[:-100], "truncated"), (data + b"\x00" * 5, "trailing data")):
    path = tmp_path / (base + (".gz" if compress else ""))
    with opener(path, "wb") as f:
      f.write(content)
    with pytest.raises(mnist.MnistError, match=re.escape(
        f"{path}: {len(content)} bytes, expected {expected} ({what})")):
      mnist.read_idx(str(path), magic=magic, count=count)


@needs_mnist
def test_cut_file_in_folder_names_the_file(tmp_path, raw_dir):
  for base in BASES:
    data = raw_bytes(raw_dir, base)
    (tmp_path / base).write_bytes(data[:-1] if base.startswith("t10k-labels") else data)
  with pytest.raises(mnist.MnistError, match=re.escape(
      f"{tmp_path / 't10k-labels-idx1-ubyte'}: 10007 bytes, expected 10008 (truncated)")):
    mnist.load_folder(str(tmp_path))


@needs_mnist
def test_wrong_magic(tmp_path, raw_dir):
  data = raw_bytes(raw_dir, "train-labels-idx1-ubyte")
  path = tmp_path / "train-labels-idx1-ubyte"
  path.write_bytes((0x803).to_bytes(4, "big") + data[4:])  # an image magic on labels
  with pytest.raises(mnist.MnistError, match=re.escape(
      f"{path}: magic number 0x00000803, expected 0x00000801")):
    mnist.read_idx(str(path), magic=mnist.LABEL_MAGIC, count=60000)
  # The right labels read as images: the label magic is rejected.
  path.write_bytes(data)
  with pytest.raises(mnist.MnistError, match=re.escape(
      f"{path}: magic number 0x00000801, expected 0x00000803")):
    mnist.read_idx(str(path), magic=mnist.IMAGE_MAGIC, count=60000)


@needs_mnist
def test_wrong_count_in_header(tmp_path, raw_dir):
  data = raw_bytes(raw_dir, "train-labels-idx1-ubyte")
  path = tmp_path / "train-labels-idx1-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(data[:4] + (59999).to_bytes(4, "big") + data[8:])
  with pytest.raises(mnist.MnistError, match=re.escape(
      f"{path}: header says 59999 items, expected 60000")):
    mnist.read_idx(str(path), magic=mnist.LABEL_MAGIC, count=60000)
  # A right file asked for the wrong count fails the same way.
  path.write_bytes(open(os.path.join(DATA_DIR, "train-labels-idx1-ubyte.gz"), "rb").read())
  with pytest.raises(mnist.MnistError, match=re.escape(
      f"{path}: header says 60000 items, expected 10000")):
    mnist.read_idx(str(path), magic=mnist.LABEL_MAGIC, count=10000)


@needs_mnist
def test_wrong_image_size_and_bad_label(tmp_path, raw_dir):
  images = raw_bytes(raw_dir, "t10k-images-idx3-ubyte")
  path = tmp_path / "t10k-images-idx3-ubyte"
  path.write_bytes(images[:8] + (32).to_bytes(4, "big") + images[12:])
  with pytest.raises(mnist.MnistError, match=re.escape(f"{path}: images of 32x28, expected 28x28")):
    mnist.read_idx(str(path), magic=mnist.IMAGE_MAGIC, count=10000)
  labels = bytearray(raw_bytes(raw_dir, "t10k-labels-idx1-ubyte"))
  labels[8 + 1234] = 10
  path = tmp_path / "t10k-labels-idx1-ubyte"
  path.write_bytes(labels)
  with pytest.raises(mnist.MnistError, match=re.escape(f"{path}: label 10 found, expected labels 0-9")):
    mnist.read_idx(str(path), magic=mnist.LABEL_MAGIC, count=10000)


@needs_mnist
def test_corrupt_gzip_stream_is_an_mnist_error(tmp_path):
  data = bytearray(open(os.path.join(DATA_DIR, "train-labels-idx1-ubyte.gz"), "rb").read())
  for i in range(100, 200):
    data[i] ^= 0xFF
  path = tmp_path / "train-labels-idx1-ubyte.gz"
  path.write_bytes(data)
  try:
    mnist.read_idx(str(path), magic=mnist.LABEL_MAGIC, count=60000)
  except mnist.MnistError as e:
    assert str(path) in str(e)
  else:
    pytest.fail("a corrupt gzip file was read without error")


# --------------------------------------------------------------------------- load()


def _no_tfds(*args, **kwargs):
  raise ConnectionError("offline in tests")


def test_auto_without_folder_or_tfds_names_both_fixes(monkeypatch):
  monkeypatch.delenv(mnist.ENV_VAR, raising=False)
  monkeypatch.setattr(mnist, "load_tfds", _no_tfds)
  d = data_config(source="auto", dir="")
  with pytest.raises(mnist.MnistError) as info:
    mnist.load(d)
  message = str(info.value)
  assert "data.dir" in message and f"${mnist.ENV_VAR}" in message
  assert "tensorflow-datasets failed (ConnectionError: offline in tests)" in message
  assert "tfds can download" in message
  assert isinstance(info.value.__cause__, ConnectionError)


def test_folder_source_without_folder(monkeypatch):
  monkeypatch.delenv(mnist.ENV_VAR, raising=False)
  monkeypatch.setattr(mnist, "load_tfds", _no_tfds)
  with pytest.raises(mnist.MnistError, match=re.escape(
      f"data.source='folder' needs data.dir or ${mnist.ENV_VAR}")):
    mnist.load(data_config(source="folder", dir=""))


def test_unknown_source_names_the_value(monkeypatch):
  monkeypatch.setattr(mnist, "load_tfds", _no_tfds)
  monkeypatch.setattr(mnist, "load_folder", _no_tfds)
  with pytest.raises(mnist.MnistError, match=r"data.source='hdf5'; expected 'auto', 'folder' or 'tfds'"):
    mnist.load(data_config(source="hdf5", dir="/somewhere"))


@pytest.mark.parametrize("source,config_dir,env_dir,expected", [
    ("auto", "/from/config", "/from/env", "/from/config"),
    ("auto", "", "/from/env", "/from/env"),
    ("folder", "", "/from/env", "/from/env"),
    ("folder", "/from/config", None, "/from/config"),
])
def test_folder_dispatch(monkeypatch, source, config_dir, env_dir, expected):
  if env_dir is None:
    monkeypatch.delenv(mnist.ENV_VAR, raising=False)
  else:
    monkeypatch.setenv(mnist.ENV_VAR, env_dir)
  monkeypatch.setattr(mnist, "load_tfds", _no_tfds)
  monkeypatch.setattr(mnist, "load_folder", lambda directory: {"dir": directory})
  assert mnist.load(data_config(source=source, dir=config_dir)) == {"dir": expected}


def test_auto_with_a_broken_folder_does_not_fall_back_to_tfds(monkeypatch, tmp_path):
  monkeypatch.setattr(mnist, "load_tfds", lambda *a, **k: pytest.fail("tfds was called"))
  with pytest.raises(mnist.MnistError, match="does not exist"):
    mnist.load(data_config(source="auto", dir=str(tmp_path / "nowhere")))


def _check_tfds_arrays(out, n):
  assert set(out) == {"train_images", "train_labels", "test_images", "test_labels"}
  for split in ("train", "test"):
    images, labels = out[f"{split}_images"], out[f"{split}_labels"]
    assert images.shape == (n, 784) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.uint8
    assert labels.max() <= 9
    assert images.max() > 0  # mock images are random, not left empty


def test_load_tfds_with_mock_data(tmp_path, monkeypatch):
  monkeypatch.delenv(mnist.ENV_VAR, raising=False)
  with tfds.testing.mock_data(num_examples=13):
    direct = mnist.load_tfds(str(tmp_path))
    via_tfds = mnist.load(data_config(source="tfds", dir="", tfds_data_dir=str(tmp_path)))
    via_auto = mnist.load(data_config(source="auto", dir=""))
  for out in (direct, via_tfds, via_auto):
    _check_tfds_arrays(out, 13)
  # The mock is deterministic, so the three readings agree.
  for name in direct:
    np.testing.assert_array_equal(direct[name], via_tfds[name])
  assert not list(tmp_path.iterdir())  # nothing was downloaded or prepared


# --------------------------------------------------------------------------- splits


def split_indices(split):
  return decode_index(split.images)


def check_consistent(indexed, s):
  labels = indexed["train_labels"].astype(np.int32)
  for name in ("labeled", "unlabeled", "validation"):
    split = getattr(s, name)
    assert split.images.dtype == np.uint8 and split.images.shape == (len(split), 784)
    assert split.labels.dtype == np.int32
    idx = split_indices(split)
    assert len(np.unique(idx)) == len(idx), f"{name} repeats an image"
    np.testing.assert_array_equal(split.labels, labels[idx])
  assert s.label_only.images is None and s.label_only.labels.dtype == np.int32
  np.testing.assert_array_equal(s.test.images, indexed["test_images"])
  np.testing.assert_array_equal(s.test.labels, indexed["test_labels"])
  assert s.test.labels.dtype == np.int32


def test_default_splits(indexed):
  s = splits_lib.make_splits(indexed, data_config(), seed=0)
  check_consistent(indexed, s)
  assert s.sizes() == {"labeled": 100, "unlabeled": 49900, "label_only": 49900,
                       "validation": 10000, "test": 10000}
  assert s.labeled.class_counts() == [10] * 10
  assert s.test.class_counts() == TEST_COUNTS
  lab, unl, val = (split_indices(x) for x in (s.labeled, s.unlabeled, s.validation))
  assert not np.intersect1d(lab, unl).size
  assert not np.intersect1d(val, lab).size and not np.intersect1d(val, unl).size
  # With every class everywhere and no caps, the three image sets tile the 60k.
  np.testing.assert_array_equal(np.sort(np.concatenate([lab, unl, val])), np.arange(60000))
  # Label-only labels follow the class counts of what labeled/validation left.
  expected = (np.array(TRAIN_COUNTS) - s.validation.class_counts()
              - np.array(s.labeled.class_counts()))
  assert s.label_only.class_counts() == expected.tolist()
  assert s.unlabeled.class_counts() == expected.tolist()


def test_class_subset_splits(indexed):
  d = data_config(num_validation=5000, labeled_classes=(0, 1, 2, 3, 4), labeled_per_class=37,
                  unlabeled_classes=(5, 6, 7, 8, 9), label_only_classes=(2, 7))
  s = splits_lib.make_splits(indexed, d, seed=3)
  check_consistent(indexed, s)
  assert len(s.validation) == 5000
  assert s.labeled.class_counts() == [37] * 5 + [0] * 5
  assert set(np.unique(s.unlabeled.labels)) == {5, 6, 7, 8, 9}
  assert set(np.unique(s.label_only.labels)) == {2, 7}
  left = np.array(TRAIN_COUNTS) - s.validation.class_counts() - np.array(s.labeled.class_counts())
  unl_counts = np.array(s.unlabeled.class_counts())
  np.testing.assert_array_equal(unl_counts[5:], left[5:])
  lo_counts = s.label_only.class_counts()
  assert lo_counts[2] == left[2] and lo_counts[7] == left[7] and sum(lo_counts) == left[2] + left[7]
  lab, unl, val = (split_indices(x) for x in (s.labeled, s.unlabeled, s.validation))
  assert not np.intersect1d(lab, unl).size
  assert not np.intersect1d(val, np.concatenate([lab, unl])).size
  # The validation set is a random draw, with every digit in it.
  assert min(s.validation.class_counts()) > 300


def test_caps_and_prefix_stability(indexed):
  base = data_config(num_validation=2000, labeled_per_class=10)
  full = splits_lib.make_splits(indexed, base, seed=7)
  capped = splits_lib.make_splits(
      indexed, data_config(num_validation=2000, labeled_per_class=10, max_unlabeled=1234,
                           max_label_only=321), seed=7)
  assert len(capped.unlabeled) == 1234 and len(capped.label_only) == 321
  # A cap keeps a prefix of the same random order and changes nothing else.
  np.testing.assert_array_equal(split_indices(capped.unlabeled),
                                split_indices(full.unlabeled)[:1234])
  np.testing.assert_array_equal(capped.label_only.labels, full.label_only.labels[:321])
  np.testing.assert_array_equal(capped.labeled.images, full.labeled.images)
  np.testing.assert_array_equal(capped.validation.images, full.validation.images)
  # The capped unlabeled set is a random draw across classes, not one digit first.
  assert min(capped.unlabeled.class_counts()) > 60
  # More labels per class keep the smaller labeled set, and the validation set.
  more = splits_lib.make_splits(
      indexed, data_config(num_validation=2000, labeled_per_class=30), seed=7)
  assert more.labeled.class_counts() == [30] * 10
  assert set(split_indices(full.labeled)) < set(split_indices(more.labeled))
  np.testing.assert_array_equal(more.validation.images, full.validation.images)
  # A cap above the pool is no cap; max_unlabeled=0 would leave a training stream empty.
  s = splits_lib.make_splits(indexed, data_config(num_validation=2000,
                                                  max_label_only=10**9), seed=7)
  assert len(s.label_only) == len(full.label_only)
  with pytest.raises(ValueError, match="data.max_unlabeled=0 would leave that stream empty"):
    splits_lib.make_splits(indexed, data_config(num_validation=2000, max_unlabeled=0), seed=7)


def test_seed_determinism(indexed):
  d = data_config(num_validation=3000, labeled_per_class=5, max_unlabeled=500)
  a = splits_lib.make_splits(indexed, d, seed=11)
  b = splits_lib.make_splits(indexed, d, seed=11)
  c = splits_lib.make_splits(indexed, d, seed=12)
  for name in ("labeled", "unlabeled", "validation"):
    np.testing.assert_array_equal(getattr(a, name).images, getattr(b, name).images)
    np.testing.assert_array_equal(getattr(a, name).labels, getattr(b, name).labels)
    overlap = np.intersect1d(split_indices(getattr(a, name)), split_indices(getattr(c, name)))
    assert len(overlap) < 0.5 * len(getattr(a, name)), name
  np.testing.assert_array_equal(a.label_only.labels, b.label_only.labels)


def test_real_images_in_splits(real):
  s = splits_lib.make_splits(real, data_config(num_validation=1000, labeled_per_class=3,
                                               max_unlabeled=100, max_label_only=100), seed=0)
  # Each labeled image is a real training image with that same label.
  train = real["train_images"]
  for image, label in zip(s.labeled.images, s.labeled.labels):
    rows = np.flatnonzero((train == image).all(axis=1))
    assert len(rows) >= 1 and label in real["train_labels"][rows]


@pytest.mark.parametrize("field,value,pattern", [
    ("labeled_classes", (3, 11), r"data.labeled_classes=\(3, 11\)"),
    ("labeled_classes", (-1,), r"data.labeled_classes=\(-1,\)"),
    ("unlabeled_classes", (2, 2), r"data.unlabeled_classes=\(2, 2\)"),
    ("label_only_classes", (), r"data.label_only_classes=\(\)"),
    ("labeled_per_class", 0, r"data.labeled_per_class=0: expected a positive integer"),
    ("labeled_per_class", -4, r"data.labeled_per_class=-4"),
    ("num_validation", 60000, r"data.num_validation=60000: expected 0 <= n < 60000"),
    ("num_validation", -1, r"data.num_validation=-1"),
])
def test_bad_split_values(indexed, field, value, pattern):
  with pytest.raises(ValueError, match=pattern):
    splits_lib.make_splits(indexed, data_config(**{field: value}), seed=0)


def test_too_many_labels_per_class(indexed):
  d = data_config(labeled_classes=(1, 5), labeled_per_class=5000)
  # Digit 1 has enough (6742 minus its validation share); digit 5 (5421) does not.
  validation = splits_lib.make_splits(indexed, data_config(labeled_per_class=1), seed=0).validation
  left = TRAIN_COUNTS[5] - validation.class_counts()[5]
  with pytest.raises(ValueError, match=re.escape(
      f"data.labeled_per_class=5000: digit 5 has only {left} training images left")):
    splits_lib.make_splits(indexed, d, seed=0)
  # Exactly as many as there are left is fine.
  s = splits_lib.make_splits(indexed, data_config(labeled_classes=(5,), labeled_per_class=left),
                             seed=0)
  assert s.labeled.class_counts()[5] == left and 5 not in s.unlabeled.labels


# --------------------------------------------------------------------------- streams


def index_stream(n, batch_size, seed=0, stream_id=0):
  return streams.CyclingStream({"i": np.arange(n), "twice": 2 * np.arange(n)},
                               batch_size=batch_size, seed=seed, stream_id=stream_id)


def flat_sequence(stream, num_steps):
  return np.concatenate([stream.batch_at(t)["i"] for t in range(num_steps)])


def test_batch_at_is_a_pure_function_of_step():
  a, b = index_stream(50, 7), index_stream(50, 7)
  forward = [a.batch_at(t)["i"] for t in range(30)]
  backward = [b.batch_at(t)["i"] for t in reversed(range(30))][::-1]
  for x, y in zip(forward, backward):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(a.batch_at(1000)["i"], b.batch_at(1000)["i"])
  batch = a.batch_at(3)
  np.testing.assert_array_equal(batch["twice"], 2 * batch["i"])  # arrays stay aligned
  np.testing.assert_array_equal(a.indices_at(3), batch["i"])
  assert a.indices_at(3).dtype == np.int64 and batch["i"].shape == (7,)


def test_one_epoch_covers_each_index_once_and_epochs_reshuffle():
  s = index_stream(60, 12)
  seq = flat_sequence(s, 15).reshape(3, 60)
  for epoch in seq:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(60))
  assert not np.array_equal(seq[0], seq[1]) and not np.array_equal(seq[1], seq[2])
  assert not np.array_equal(seq[0], np.arange(60))  # shuffled, not in order
  assert s.epochs_at(5) == 1.0 and s.epochs_at(7) == pytest.approx(1.4)


@pytest.mark.parametrize("n,batch_size", [(50, 7), (13, 5), (5, 12), (1, 3)])
def test_batches_straddling_epochs(n, batch_size):
  s = index_stream(n, batch_size)
  epochs = 6
  steps = -(-epochs * n // batch_size)
  seq = flat_sequence(s, steps)[: epochs * n].reshape(epochs, n)
  for epoch in seq:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  if n > 5:
    assert len({tuple(e) for e in seq}) > 1


def test_different_streams_and_seeds_differ():
  base = flat_sequence(index_stream(100, 10), 10)
  other_stream = flat_sequence(index_stream(100, 10, stream_id=1), 10)
  other_seed = flat_sequence(index_stream(100, 10, seed=1), 10)
  np.testing.assert_array_equal(np.sort(other_stream), np.arange(100))
  assert (base != other_stream).mean() > 0.9
  assert (base != other_seed).mean() > 0.9


def test_stream_errors():
  with pytest.raises(ValueError, match="share one non-zero length"):
    streams.CyclingStream({"x": np.zeros(3), "y": np.zeros(4)}, batch_size=1, seed=0, stream_id=0)
  with pytest.raises(ValueError, match="share one non-zero length"):
    streams.CyclingStream({"x": np.zeros(0)}, batch_size=1, seed=0, stream_id=0)
  with pytest.raises(ValueError, match="batch_size=0"):
    streams.CyclingStream({"x": np.zeros(3)}, batch_size=0, seed=0, stream_id=0)


def test_make_streams_pairs_images_with_their_labels(indexed):
  config = default.get_config()
  config.data.num_validation = 1000
  config.data.labeled_per_class = 3
  config.data.max_unlabeled = 77
  config.data.max_label_only = 55
  config.data.labeled_batch_size = 8
  s = splits_lib.make_splits(indexed, config.data, seed=0)
  st = streams.make_streams(s, config, seed=0)
  indexed_batch = streams.batch_at(st, 5)
  assert indexed_batch["labeled"]["index"].dtype == np.int32
  batch = jax.device_get(streams.gather_images(indexed_batch, jnp.asarray(indexed["train_images"])))
  assert set(batch) == {"labeled", "unlabeled", "label_only"}
  assert batch["labeled"]["x"].shape == (8, 784) and batch["labeled"]["x"].dtype == np.uint8
  assert batch["labeled"]["y"].shape == (8, 10) and batch["labeled"]["y"].dtype == np.float32
  np.testing.assert_array_equal(batch["labeled"]["y"].sum(axis=1), 1)
  labels = indexed["train_labels"]
  np.testing.assert_array_equal(batch["labeled"]["y"].argmax(1),
                                labels[decode_index(batch["labeled"]["x"])])
  assert set(batch["unlabeled"]) == {"x"} and batch["unlabeled"]["x"].shape == (100, 784)
  assert set(batch["label_only"]) == {"y"} and batch["label_only"]["y"].shape == (100, 10)
  assert st["unlabeled"].size == 77 and st["label_only"].size == 55
  # The three streams shuffle independently.
  assert not np.array_equal(st["labeled"].indices_at(0)[:8] % 30,
                            st["unlabeled"].indices_at(0)[:8] % 30)


# --------------------------------------------------------------------------- binarize


ALL_LEVELS = np.arange(256, dtype=np.uint8)


def test_binarize_static_and_none():
  x = jnp.asarray(ALL_LEVELS)
  static = np.asarray(streams.binarize(x, jax.random.key(0), mode="static"))
  assert static.dtype == np.float32
  np.testing.assert_array_equal(static, (ALL_LEVELS >= 128).astype(np.float32))  # 128/255 > 0.5
  none = np.asarray(streams.binarize(x, jax.random.key(0), mode="none"))
  assert none.dtype == np.float32 and none[0] == 0 and none[-1] == 1
  np.testing.assert_allclose(none, ALL_LEVELS / 255.0, rtol=1e-6)
  jitted = jax.jit(streams.binarize, static_argnames="mode")
  np.testing.assert_array_equal(jitted(x, jax.random.key(0), mode="static"), static)
  # deeplearning.net's mnist.pkl.gz scale: k/256 exactly, its brightest pixel 0.99609375.
  none_256 = np.asarray(jitted(x, jax.random.key(0), mode="none_256"))
  np.testing.assert_array_equal(none_256, ALL_LEVELS.astype(np.float64) / 256)
  assert none_256.dtype == np.float32 and none_256[-1] == 0.99609375


def test_binarize_dynamic_is_bernoulli_of_intensity():
  draws = 4000
  x = jnp.tile(jnp.asarray(ALL_LEVELS), (draws, 1))
  key = jax.random.key(42)
  out = np.asarray(streams.binarize(x, key, mode="dynamic"))
  assert out.dtype == np.float32 and set(np.unique(out)) <= {0.0, 1.0}
  np.testing.assert_array_equal(out, streams.binarize(x, key, mode="dynamic"))  # same key
  assert not np.array_equal(out, streams.binarize(x, jax.random.key(43), mode="dynamic"))
  p = ALL_LEVELS / 255.0
  assert (out[:, 0] == 0).all() and (out[:, -1] == 1).all()
  # Per level, the mean of 4000 draws is within 5 binomial std (+ float slack) of p.
  tol = 5 * np.sqrt(p * (1 - p) / draws) + 1e-6
  mean = out.mean(axis=0)
  assert (np.abs(mean - p) <= tol).all(), np.abs(mean - p).max()
  # And not merely thresholded: mid-grey pixels are sometimes on, sometimes off.
  assert 0.4 < mean[127] < 0.6


@needs_mnist
def test_binarize_dynamic_on_real_images(real):
  images = jnp.asarray(real["test_images"][:500])
  keys = jax.random.split(jax.random.key(0), 20)
  out = np.stack([np.asarray(streams.binarize(images, k, mode="dynamic")) for k in keys])
  p = real["test_images"][:500].astype(np.float64) / 255
  # Over 20 x 500 x 784 independent pixels, the overall mean matches the intensity.
  std = np.sqrt((p * (1 - p)).sum() * len(keys)) / out.size
  assert abs(out.mean() - p.mean()) < 5 * std
  # Blank pixels never fire, saturated ones always do.
  assert not out[:, p == 0].any() and out[:, p == 1].all()
  # Per-pixel average over 20 draws tracks intensity closely.
  assert np.corrcoef(out.mean(0).ravel(), p.ravel())[0, 1] > 0.95


@pytest.mark.parametrize("mode", ["stochastic", "Static", ""])
def test_binarize_bad_mode(mode):
  with pytest.raises(ValueError, match=re.escape(f"data.binarization={mode!r}")):
    streams.binarize(jnp.asarray(ALL_LEVELS), jax.random.key(0), mode=mode)
