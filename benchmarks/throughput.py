r"""Throughput of the jitted train step, and achieved vs. this machine's matmul GFLOP/s.

  python benchmarks/throughput.py [--config experiments/configs/m2_benchmark.py] [--steps 50]

FLOPs are counted from the MLPs' shapes: 2 * (in * out) per dense layer per example,
forward; a training step costs about 3x its forward pass (forward + two matmuls per layer
backward). XLA's own count from cost_analysis() is printed beside it. Data loading is
excluded: one batch is placed on the device and reused.
"""

import time

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

from untapped_jax import train

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/m2_benchmark.py", "Config file.", lock_config=False)
_STEPS = flags.DEFINE_integer("steps", 50, "Timed steps (after compilation).")
_MATMUL = flags.DEFINE_integer("matmul_size", 1024, "Square matmul size for the peak figure.")


def mlp_macs(din, hidden, dout):
  sizes = [din, *hidden, dout]
  return sum(a * b for a, b in zip(sizes, sizes[1:]))


def label_only_forward_macs(config, *, classifier: int, encoder: int, decoder: int) -> int:
  """Multiply-accumulates of one label-only example's forward pass."""
  o = config.objective
  prior = classifier + config.model.num_classes * (encoder + decoder) if (
      o.image_prior == "model") else 0
  return o.label_only_num_samples * (decoder + encoder + classifier + prior)


def forward_flops_per_step(config) -> dict[str, float]:
  """Forward FLOPs of one step's MLP passes, by stream."""
  m, d = config.model, config.data
  h, k, s = tuple(m.hidden), m.num_classes, config.objective.num_samples
  classifier = mlp_macs(m.num_pixels, h, k)
  encoder = mlp_macs(m.num_pixels + k, h, 2 * m.latent_dim)
  encoder_x = m.num_pixels * h[0]  # shared by the K labels of the unlabeled bound
  decoder = mlp_macs(k + m.latent_dim, h, m.num_pixels)
  flops = {
      "labeled": 2 * d.labeled_batch_size * (classifier + encoder + s * decoder),
      "unlabeled": 2 * d.unlabeled_batch_size * (
          classifier + encoder_x + k * (encoder - encoder_x + s * decoder)),
  }
  if config.model_name == "untapped":
    flops["label_only"] = 2 * d.label_only_batch_size * label_only_forward_macs(
        config, classifier=classifier, encoder=encoder, decoder=decoder)
  return flops


def matmul_gflops(n: int, repeats: int = 20) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n))
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(repeats):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def synthetic_batch(config, rng):
  d, k = config.data, config.model.num_classes
  labels = lambda n: np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
  images = lambda n: rng.integers(0, 256, (n, config.model.num_pixels), dtype=np.uint8)
  return jax.device_put({
      "labeled": {"x": images(d.labeled_batch_size), "y": labels(d.labeled_batch_size)},
      "unlabeled": {"x": images(d.unlabeled_batch_size)},
      "label_only": {"y": labels(d.label_only_batch_size)}})


def main(argv):
  del argv
  config = _CONFIG.value
  graphdef, tx, state = train.create_train_state(config, seed=0)
  loss_fn = train.build_loss_fn(
      config, graphdef, num_labeled=100, num_unlabeled=50000, num_label_only=50000,
      pixel_probs=np.full(config.model.num_pixels, 0.2, np.float32))
  step = train.make_train_step(loss_fn, tx, binarization=config.data.binarization)
  batch = synthetic_batch(config, np.random.default_rng(0))
  xla_flops = step.lower(state, batch).compile().cost_analysis()
  xla_flops = (xla_flops[0] if isinstance(xla_flops, list) else xla_flops).get("flops", float("nan"))
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  t = time.perf_counter()
  for _ in range(_STEPS.value):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - t) / _STEPS.value

  forward = forward_flops_per_step(config)
  step_flops = 3 * sum(forward.values())
  examples = config.data.labeled_batch_size + config.data.unlabeled_batch_size + (
      config.data.label_only_batch_size if "label_only" in forward else 0)
  peak = matmul_gflops(_MATMUL.value)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  backend: {jax.default_backend()}")
  print(f"model: {config.model_name}  batch sizes (labeled, unlabeled, label_only): "
        f"{config.data.labeled_batch_size}, {config.data.unlabeled_batch_size}, "
        f"{config.data.label_only_batch_size}")
  print(f"train step: {seconds * 1e3:.2f} ms  ->  {examples / seconds:,.0f} training examples/s")
  print(f"MLP FLOPs per step (3x forward): {step_flops / 1e9:.3f} GFLOP "
        f"(forward by stream: { {k: round(v / 1e9, 4) for k, v in forward.items()} }); "
        f"XLA cost_analysis: {xla_flops / 1e9:.3f} GFLOP")
  print(f"achieved: {step_flops / seconds / 1e9:.1f} GFLOP/s; "
        f"{_MATMUL.value}^2 matmul on this machine: {peak:.1f} GFLOP/s "
        f"({100 * step_flops / seconds / 1e9 / peak:.0f}% of it)")


if __name__ == "__main__":
  app.run(main)
