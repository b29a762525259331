"""compiler_options: the train step's XLA option reaches XLA on the CPU, changes the
compiled program and not the numbers, and stands aside where it should."""

import re

import jax
import numpy as np
import pytest

from untapped_jax import compiler_options
from untapped_jax import objective
from untapped_jax import train
from untapped_jax import train_state
from untapped_jax.configs import default
from untapped_jax.data import mnist

from real_mnist import DATA_DIR

OPTION = compiler_options.YNNPACK_FUSIONS
cpu_only = pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU option")


def small_step(xla_cpu_ynnpack: bool, matmul_precision: str = "default"):
  """(compiled train step, its arguments) of a 64-unit M2 on MNIST rows."""
  c = default.get_config()
  c.model.hidden, c.model.latent_dim = (64,), 8
  c.model.matmul_precision = matmul_precision
  c.data.labeled_batch_size = c.data.unlabeled_batch_size = c.data.label_only_batch_size = 16
  c.train.xla_cpu_ynnpack = xla_cpu_ynnpack
  graphdef, tx, state = train_state.create_train_state(c, seed=0)
  state = train_state.stack([state])
  images = jax.device_put(mnist.load_folder(DATA_DIR)["train_images"][:512].reshape(512, -1))
  rng = np.random.default_rng(0)
  batch = {"labeled": {"index": rng.integers(0, 512, (1, 16)).astype(np.int32),
                       "y": np.eye(10, dtype=np.float32)[rng.integers(0, 10, (1, 16))]},
           "unlabeled": {"index": rng.integers(0, 512, (1, 16)).astype(np.int32)},
           "label_only": {"y": np.eye(10, dtype=np.float32)[rng.integers(0, 10, (1, 16))]}}
  numbers = train_state.stack([objective.loss_numbers(
      c, pixel_probs=np.full(784, 0.2, np.float32), num_labeled=100, num_unlabeled=50000,
      num_label_only=50000)])
  step = train.make_train_step(c, graphdef, tx)
  return step, (state, batch, numbers, images)


@cpu_only
def test_the_default_turns_ynnpack_off_and_true_keeps_xlas_default(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=1")
  assert compiler_options.train_step_options(xla_cpu_ynnpack=False) == {OPTION: ""}
  assert compiler_options.train_step_options(xla_cpu_ynnpack=True) is None
  assert default.get_config().train.xla_cpu_ynnpack is False


@cpu_only
def test_bfloat16_matmuls_keep_ynnpack_for_each_dot_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=1")
  assert compiler_options.train_step_options(
      xla_cpu_ynnpack=False, matmul_precision="BF16_BF16_F32") == {
          OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  assert compiler_options.train_step_options(
      xla_cpu_ynnpack=False, matmul_precision="BF16_BF16_F32_X3") == {OPTION: ""}


@cpu_only
def test_under_bfloat16_matmuls_every_dot_of_the_step_is_ynnpacks_in_bfloat16(monkeypatch):
  """model.matmul_precision='BF16_BF16_F32' on the CPU: every product of the compiled
  train step, forward and backward, is a YNNPACK dot of bfloat16 operands (the CPU's
  bfloat16 units), none a float32 dot that XLA fell back to; the loss stays near the
  float32 step's and is repeated to the bit."""
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=1")
  losses = {}
  for precision in ("default", "BF16_BF16_F32"):
    step, (state, *inputs) = small_step(False, precision)
    program = step.lower(state, *inputs).compile().as_text()
    for _ in range(3):
      state, metrics = step(state, *inputs)
    losses[precision] = float(metrics["loss"][0])
  computations = re.findall(r"\n(%[\w.]+ \([^\n]*\) -> [^\n]*\{\n.*?\n\})", program, re.S)
  with_dot = [c for c in computations if re.search(r"\bdot\(", c)]
  # 7 layers: 7 forward products, 7 weight gradients, input gradients for all but the
  # first layers, per stream.
  assert len(with_dot) >= 21
  assert program.count("__ynn_fusion") >= len(with_dot)
  for c in with_dot:
    assert re.findall(r"= (\w+)\[[^\n]*parameter\(", c) == ["bf16", "bf16"], c
  assert losses["BF16_BF16_F32"] == pytest.approx(losses["default"], rel=1e-2)
  assert losses["BF16_BF16_F32"] != losses["default"]
  # The same bytes from the same state, as every CPU step.
  step, (state, *inputs) = small_step(False, "BF16_BF16_F32")
  for _ in range(3):
    state, metrics = step(state, *inputs)
  assert float(metrics["loss"][0]) == losses["BF16_BF16_F32"]


@cpu_only
def test_xla_flags_setting_the_option_wins(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", f"--{OPTION}=LIBRARY_FUSION_TYPE_DOT")
  assert compiler_options.train_step_options(xla_cpu_ynnpack=False) is None


def test_an_option_xla_does_not_know_is_left_out():
  assert not compiler_options._accepted((("xla_cpu_no_such_option", ""),))  # pylint: disable=protected-access


@cpu_only
def test_the_option_reaches_the_compiled_step_and_leaves_the_loss(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=1")
  losses, programs = {}, {}
  for ynnpack in (True, False):
    step, (state, *inputs) = small_step(ynnpack)
    programs[ynnpack] = step.lower(state, *inputs).compile().as_text()
    for _ in range(3):
      state, metrics = step(state, *inputs)
    losses[ynnpack] = float(metrics["loss"][0])
  # XLA's default gives YNNPACK fusions; the package's default none.
  assert "ynn_fusion" in programs[True]
  assert "ynn_fusion" not in programs[False]
  # Three Adam steps later the two programs differ by float rounding only.
  assert losses[False] == pytest.approx(losses[True], rel=1e-5)
