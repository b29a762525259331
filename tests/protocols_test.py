"""Tests of the authors' protocol and the new semantic figures (evaluate/semantic.py).

greedy_assignment is compared with the authors' own function, copied verbatim
below; the confusion figures with NumPy computations from hand-built matrices;
authors_protocol and authors_images with evaluators and models whose answers are
set by hand.
"""

from __future__ import annotations

from collections import Counter
import itertools

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from untapped_jax.evaluate import authors_protocol
from untapped_jax.evaluate import evaluator
from untapped_jax.evaluate import semantic
from untapped_jax.models import M2

from numpy_reference import NumpyM2

ACTIVATION = "softplus"  # of the random models below, and of their NumPy reference


def set_param(param, value):
  param[...] = jnp.asarray(value, jnp.float32)


# ----------------------------------------------------------------------------- reference


# The authors' assign_permutation, verbatim from imgemp/untapped examples/DEMO_mnist4.py.
def assign_permutation(p):
  assert p.shape[0] == p.shape[1]
  if p.shape[0] == 1:
    return np.array([0])
  labels = np.argmax(p,axis=1)
  not_dups = np.array([item for item, count in Counter(labels).items() if count == 1])
  dups = np.array([item for item, count in Counter(labels).items() if count > 1])
  if len(dups) > 0:
    rows = [idx for idx in range(p.shape[0]) if labels[idx] in dups]
    cols = [idx for idx in range(p.shape[1]) if idx not in not_dups]
    if len(rows) == p.shape[0]:
      winner = np.argmax(p[:,dups[0]])
      rows = [idx for idx in rows if idx != winner]
      cols = [idx for idx in cols if idx != dups[0]]
    p_new = p[rows,:]
    p_new = p_new[:,cols]
    sub_labels = assign_permutation(p_new)
    labels[rows] = np.array(cols)[sub_labels]
  return labels


def random_matrices(seed: int, count: int):
  """Random [n, n] matrices, n = 1..6; every other one with forced duplicate argmaxes
  (each row gets a bonus on one of one or two shared columns)."""
  rng = np.random.default_rng(seed)
  for i in range(count):
    n = 1 + i % 6
    p = rng.random((n, n))
    if i % 2:
      shared = rng.integers(0, n, size=rng.integers(1, 3))
      p[np.arange(n), rng.choice(shared, size=n)] += 1.0
    yield p


# Rows 0, 1 want column 0, rows 2, 3 want column 1: every row clashes. Column 0's best
# score is row 2's (0.8), but row 2 requested column 1.
STEALER = np.array([[0.50, 0.10, 0.30, 0.20],
                    [0.60, 0.10, 0.20, 0.15],
                    [0.80, 0.90, 0.00, 0.00],
                    [0.10, 0.70, 0.15, 0.05]])
# Rows 0, 1 want column 1 (seen first), rows 2, 3 want column 0: every row clashes, and
# Counter's first duplicate (1) is not np.unique's (0). The authors settle column 1
# first (row 0 keeps it, rows 1-3 share columns 0, 2, 3): [1, 3, 2, 0]; settling the
# clashing columns in sorted order would give [1, 2, 3, 0].
ORDER_MATTERS = np.array([[0.38, 0.93, 0.72, 0.48],
                          [0.27, 0.76, 0.00, 0.44],
                          [0.69, 0.21, 0.14, 0.57],
                          [0.90, 0.84, 0.41, 0.11]])


def is_permutation(perm, n):
  return sorted(np.asarray(perm).tolist()) == list(range(n))


# ----------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_greedy_identity_like(n):
  p = np.full((n, n), 0.1) + np.eye(n)
  np.testing.assert_array_equal(authors_protocol.greedy_assignment(p), np.arange(n))


@pytest.mark.parametrize("p,expected", [
    # Rows 0 and 1 both want column 0; row 1 scores it higher and keeps it, row 0
    # gets the column nobody holds.
    ([[0.8, 0.15, 0.05], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8]], [1, 0, 2]),
    ([[0.9, 0.05, 0.05], [0.8, 0.15, 0.05], [0.1, 0.1, 0.8]], [0, 1, 2]),
    # All three want column 1: row 2 keeps it, rows 0, 1 split columns 0 and 2 by score.
    ([[0.3, 0.4, 0.3], [0.1, 0.5, 0.4], [0.0, 0.9, 0.1]], [0, 2, 1]),
    # Every row wants column 0 of a 2x2: the higher score keeps it.
    ([[0.6, 0.4], [0.7, 0.3]], [1, 0]),
])
def test_greedy_two_rows_one_column(p, expected):
  np.testing.assert_array_equal(authors_protocol.greedy_assignment(np.array(p)), expected)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_greedy_is_the_authors_function_verbatim(seed):
  for p in random_matrices(seed, 600):
    np.testing.assert_array_equal(authors_protocol.greedy_assignment(p.copy()),
                                  assign_permutation(p.copy()), err_msg=str(p))


def test_greedy_settles_clashing_columns_in_the_authors_order():
  np.testing.assert_array_equal(authors_protocol.greedy_assignment(ORDER_MATTERS.copy()),
                                assign_permutation(ORDER_MATTERS.copy()))


def test_greedy_output_is_a_permutation_except_the_authors_stealer_case():
  # Kept as the authors wrote it (their protocol, reproduced): when every row clashes,
  # the 'winner' of column dups[0] may be a row that asked for another column, which
  # then keeps its own, so some column goes twice. Everywhere else: a permutation.
  assert not is_permutation(authors_protocol.greedy_assignment(STEALER.copy()), 4)
  bad = sum(not is_permutation(authors_protocol.greedy_assignment(p.copy()), len(p))
            for p in random_matrices(7, 2400))
  assert 0 < bad < 0.03 * 2400


def test_stealer_by_hand_is_shared_with_the_authors():
  # Traced by hand: row 2 'wins' column 0 but keeps column 1; rows 0, 1, 3 are matched
  # to columns 1, 2, 3 -> row 3 takes 1, rows 0, 1 take 2, 3.
  expected = [2, 3, 1, 1]
  assert assign_permutation(STEALER.copy()).tolist() == expected
  assert authors_protocol.greedy_assignment(STEALER.copy()).tolist() == expected


@pytest.mark.parametrize("shape", [(2, 3), (4,)])
def test_greedy_rejects_non_square(shape):
  with pytest.raises(ValueError, match="square"):
    authors_protocol.greedy_assignment(np.ones(shape))


# ----------------------------------------------------------------------------- confusion


CONF = np.array([[8, 2, 0, 0],
                 [0, 5, 5, 0],   # purity 0.5, majority 1 (tie -> smaller digit)
                 [0, 0, 3, 7],
                 [1, 0, 0, 9]])  # rows 2 and 3 both mostly 3


def np_mi(confusion):
  """I(dimension; digit) in nats with the dimension uniform."""
  c = np.asarray(confusion, float)
  k = len(c)
  joint = c / c.sum(1, keepdims=True) / k
  outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
  nz = joint > 0
  return float(np.sum(joint[nz] * np.log(joint[nz] / outer[nz])))


def brute_force_matched(confusion):
  k = len(confusion)
  return max(sum(confusion[i, p[i]] for i in range(k)) for p in itertools.permutations(range(k)))


def test_confusion_semantics_hand_matrix():
  sem = semantic.confusion_semantics(CONF, seen_digits=(0, 1), ownership_threshold=0.6)
  # Best one-to-one: 0->0, 1->1, 2->2, 3->3 = 8 + 5 + 3 + 9 = 25 (giving 3 to dim 2
  # instead gets at most 7 + 1 + 2 + 5 = 15).
  assert sem["matched_agreement"] == pytest.approx(brute_force_matched(CONF) / 40)
  assert brute_force_matched(CONF) == 8 + 5 + 3 + 9
  np.testing.assert_allclose(sem["purity_per_dimension"], [0.8, 0.5, 0.7, 0.9])
  assert sem["mean_purity"] == pytest.approx(0.725)
  assert sem["majority_digits"] == [0, 1, 3, 3]
  assert sem["owning_dimensions"] == 3  # dims 0, 2, 3
  assert sem["owned_digits"] == 2  # digits 0 and 3
  assert sem["seen_agreement"] == pytest.approx((0.8 + 0.5) / 2)
  assert sem["dimension_digit_mi"] == pytest.approx(np_mi(CONF), rel=1e-9)


@pytest.mark.parametrize("threshold,owning,owned", [(0.5, 4, 3), (0.75, 2, 2), (0.85, 1, 1),
                                                    (0.95, 0, 0)])
def test_ownership_threshold(threshold, owning, owned):
  sem = semantic.confusion_semantics(CONF, ownership_threshold=threshold)
  assert (sem["owning_dimensions"], sem["owned_digits"]) == (owning, owned)


def test_seen_agreement_ignores_digits_beyond_k_and_is_nan_without_seen():
  assert semantic.confusion_semantics(CONF, seen_digits=(2, 3, 7))["seen_agreement"] == (
      pytest.approx((0.3 + 0.9) / 2))
  assert np.isnan(semantic.confusion_semantics(CONF)["seen_agreement"])


@pytest.mark.parametrize("k", [2, 4, 10])
def test_mi_of_a_permutation_matrix_is_log_k(k):
  perm = np.random.default_rng(k).permutation(k)
  confusion = np.zeros((k, k), int)
  confusion[np.arange(k), perm] = 13
  sem = semantic.confusion_semantics(confusion)
  assert sem["dimension_digit_mi"] == pytest.approx(np.log(k), rel=1e-12)
  assert sem["matched_agreement"] == 1.0


def test_mi_is_zero_when_every_row_is_the_same_distribution():
  row = np.array([3, 0, 5, 2, 10])
  confusion = np.stack([row * m for m in (1, 2, 3, 1, 4)])  # same p(digit|dim), other sizes
  assert semantic.confusion_semantics(confusion)["dimension_digit_mi"] == pytest.approx(
      0.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mi_weights_dimensions_uniformly(seed):
  # Rows of very different sizes: the MI is that of p(digit|dim) with uniform dims,
  # not of the pooled counts.
  rng = np.random.default_rng(seed)
  confusion = rng.integers(0, 20, (6, 6)) * rng.integers(1, 50, (6, 1)) + 1
  got = semantic.confusion_semantics(confusion)["dimension_digit_mi"]
  assert got == pytest.approx(np_mi(confusion), rel=1e-9)
  pooled = confusion / confusion.sum()
  outer = pooled.sum(1, keepdims=True) * pooled.sum(0, keepdims=True)
  assert got != pytest.approx(float(np.sum(pooled * np.log(pooled / outer))), rel=1e-3)


# ----------------------------------------------------------------------------- authors_protocol


BLOCK = 78  # pixel block j (78 pixels) feeds digit j's logit


def block_evaluator():
  w = np.zeros((784, 10), np.float32)
  for j in range(10):
    w[j * BLOCK:(j + 1) * BLOCK, j] = 1.0 / BLOCK
  return {"w": w, "b": np.zeros(10, np.float32)}


def block_images(logits):
  """Images whose pixel block j has value logits[k, j]: the evaluator logits are `logits`."""
  images = np.zeros((len(logits), 784), np.float32)
  for j in range(10):
    images[:, j * BLOCK:(j + 1) * BLOCK] = np.asarray(logits)[:, j:j + 1]
  return images


def softmax(a):
  a = np.asarray(a, np.float64)
  e = np.exp(a - a.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def test_authors_protocol_distinct_unseen_digits():
  targets = [0, 8, 2, 3, 1, 6, 5, 9, 8, 7]  # dim 1 draws an 8, dim 4 a 1
  logits = 0.2 * np.random.default_rng(0).random((10, 10))
  logits[np.arange(10), targets] += 3.0
  out = authors_protocol.authors_protocol(block_images(logits), block_evaluator(),
                                  seen_digits=(0, 1, 2, 3, 4))
  # Seen dimensions keep their digit, whatever they draw; unseen ones are matched on
  # the unseen block: 5->6, 6->5, 7->9, 8->8, 9->7.
  assert out["authors_permutation"] == [0, 1, 2, 3, 4, 6, 5, 9, 8, 7]
  assert out["authors_evaluator_digits"] == targets
  assert out["authors_distinct_digits"] == 9  # 8 twice; digit 4 missing


def test_authors_protocol_clash_on_the_unseen_block():
  logits = np.zeros((10, 10))
  logits[np.arange(10), np.arange(10)] = 4.0
  # Dims 5 and 6 both look most like 7; dim 6 more so. Dim 7 looks like a 2 (a seen
  # digit) but among unseen digits prefers 9 -- only the unseen block counts.
  logits[5] = 0.0
  logits[5, [7, 5]] = [3.0, 1.0]
  logits[6] = 0.0
  logits[6, [7, 6]] = [3.5, 0.5]
  logits[7] = 0.0
  logits[7, [2, 9, 7]] = [6.0, 2.0, 1.0]
  logits[9] = 0.0
  logits[9, [9, 8]] = [0.5, 0.4]
  out = authors_protocol.authors_protocol(block_images(logits), block_evaluator(),
                                  seen_digits=(0, 1, 2, 3, 4))
  unseen = [5, 6, 7, 8, 9]
  expected = np.arange(10)
  expected[unseen] = np.asarray(unseen)[assign_permutation(softmax(logits)[np.ix_(unseen,
                                                                                  unseen)])]
  assert out["authors_permutation"] == expected.tolist()
  # By hand: dim 6 keeps 7 (3.5 > 3), dim 9 beats dim 7 for 9, dim 5 goes to 5, dim 7 to 6.
  assert expected.tolist() == [0, 1, 2, 3, 4, 5, 7, 6, 8, 9]
  assert out["authors_evaluator_digits"] == np.argmax(logits, 1).tolist()
  assert out["authors_distinct_digits"] == len(set(np.argmax(logits, 1).tolist()))


@pytest.mark.parametrize("seed", range(4))
def test_authors_protocol_random_against_reference(seed):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0, 2, (10, 10))
  seen = tuple(sorted(rng.choice(10, size=rng.integers(0, 10), replace=False).tolist()))
  out = authors_protocol.authors_protocol(block_images(logits), block_evaluator(), seen_digits=seen)
  probs = softmax(logits)
  unseen = [d for d in range(10) if d not in seen]
  expected = np.arange(10)
  if unseen:
    expected[unseen] = np.asarray(unseen)[assign_permutation(
        probs[np.ix_(unseen, unseen)])]
  assert out["authors_permutation"] == expected.tolist()
  assert out["authors_distinct_digits"] == len(set(np.argmax(logits, 1).tolist()))


# ----------------------------------------------------------------------------- authors_images


@pytest.mark.slow
def test_authors_images_constant_encoder_and_label_only_decoder():
  # Encoder mean = c whatever the input; decoder h = relu(e_k), logits = table[k].
  d, k, z_dim = 12, 4, 3
  model = M2(num_pixels=d, num_classes=k, latent_dim=z_dim, hidden=(k,), activation="relu",
             rngs=nnx.Rngs(0))
  (enc_out,) = model.encoder.net.layers
  set_param(enc_out.kernel, np.zeros((k, 2 * z_dim)))
  set_param(enc_out.bias, [0.3, -1.2, 2.0, 0.0, 0.0, 0.0])
  table = np.random.default_rng(1).normal(0, 2, (k, d))
  first, second = model.decoder.net.layers
  set_param(first.kernel, np.concatenate([np.eye(k), np.zeros((z_dim, k))]))
  set_param(first.bias, np.zeros(k))
  set_param(second.kernel, table)
  set_param(second.bias, np.zeros(d))
  graphdef, params = nnx.split(model)
  rng = np.random.default_rng(2)
  x = (rng.random((9, d)) < 0.5).astype(np.float32)
  y = np.eye(k, dtype=np.float32)[rng.integers(0, k, 9)]
  images = authors_protocol.authors_images(graphdef, params, x, y)
  assert images.shape == (k, d) and images.dtype == np.float32
  np.testing.assert_array_equal(images, (table > 0).astype(np.float32))


def np_authors_images(ref, x, y):
  """Decoder logits at (e_k, z_bar) for every k, z_bar the data mean of q(z|x,y)'s mean."""
  mean, _ = ref.encode(x, y)
  z_bar = mean.mean(0)
  k = ref.num_classes
  return ref.decoder_logits(np.eye(k), np.tile(z_bar, (k, 1))), z_bar


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_authors_images_use_the_mean_encoder_output(seed):
  # A random model whose decoder depends strongly on z: the images are the decoder
  # at (e_k, mean over the data of q(z|x,y)'s mean), thresholded at 0.5.
  d, k, z_dim = 30, 5, 2
  model = M2(num_pixels=d, num_classes=k, latent_dim=z_dim, hidden=(16,),
             activation=ACTIVATION, rngs=nnx.Rngs(seed))
  first = model.decoder.net.layers[0]
  kernel = np.asarray(first.kernel[...]).copy()
  kernel[k:] *= 20.0  # z rows
  set_param(first.kernel, kernel)
  enc_out = model.encoder.net.layers[-1]
  set_param(enc_out.kernel, np.asarray(enc_out.kernel[...]) * 5.0)
  graphdef, params = nnx.split(model)
  rng = np.random.default_rng(seed)
  x = (rng.random((50, d)) < 0.4).astype(np.float32)
  y = np.eye(k, dtype=np.float32)[rng.integers(0, k, 50)]
  images = authors_protocol.authors_images(graphdef, params, x, y)
  ref = NumpyM2(model, ACTIVATION)
  logits, z_bar = np_authors_images(ref, x, y)
  clear = np.abs(logits) > 1e-4
  np.testing.assert_array_equal(images[clear], (logits[clear] > 0).astype(np.float32))
  # The test can tell z_bar from z = 0: those images differ.
  zero_logits = ref.decoder_logits(np.eye(k), np.zeros((k, z_dim)))
  assert np.abs(z_bar).max() > 0.1
  assert np.any((zero_logits > 0) != (logits > 0))


# ----------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize("sizes", [(784, 512, 512, 10), (7, 5, 3, 10)])
def test_evaluator_logits_mlp_is_a_relu_mlp(sizes):
  rng = np.random.default_rng(len(sizes) + sizes[0])
  params = {}
  for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
    params[f"w{i}"] = rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32)
    params[f"b{i}"] = rng.normal(0, 0.5, b).astype(np.float32)
  x = rng.random((6, sizes[0])).astype(np.float32)
  h = x.astype(np.float64)
  for i in range(3):
    h = h @ params[f"w{i}"].astype(np.float64) + params[f"b{i}"]
    if i < 2:
      h = np.maximum(h, 0.0)
  got = np.asarray(evaluator.evaluator_logits(params, jnp.asarray(x)))
  np.testing.assert_allclose(got, h, rtol=1e-4, atol=1e-4)


def test_evaluator_logits_logreg():
  rng = np.random.default_rng(0)
  w, b = rng.normal(size=(8, 10)), rng.normal(size=10)
  x = rng.random((3, 8))
  got = evaluator.evaluator_logits({"w": jnp.asarray(w), "b": jnp.asarray(b)}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got), x @ w + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["cnn", "MLP", ""])
def test_unknown_evaluator_kind_is_named(kind, tmp_path):
  with pytest.raises(ValueError, match=repr(kind)):
    evaluator.load_or_train_evaluator({}, cache_dir=str(tmp_path), kind=kind)
