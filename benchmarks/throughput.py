r"""Train-step throughput: untapped_jax's jitted steps against PyTorch, and populations.

  python benchmarks/throughput.py [--json] [--unlabeled_batch 200] [--steps 30]
  python benchmarks/throughput.py --tiny --json   # seconds-long, for tests
  python benchmarks/throughput.py --json --labeled_batch 10000 --unlabeled_batch 10000 \
      --matmul_size 8192 --compute_dtype bfloat16 --peak_tflops 989   # an accelerator

One table, then (--json) one JSON line. Each figure is measured in its own
subprocess, so each has its own peak resident memory (ru_maxrss) and no run warms
another's caches:
  - jax_m2, jax_untapped: train.make_train_step (a population of one, as every run),
    default networks, --unlabeled_batch unlabeled images plus the config's labeled and
    label-only batches; unlabeled examples per second.
  - torch_eager, torch_compile: benchmarks/torch_m2.py, the same layers and batches
    (needs the 'bench' extra: pip install -e '.[bench]').
  - jax_m2_sS: a population of S replicas of the M2 step, as the package steps it
    (train.replicas_per_pass's default: vmapped on an accelerator, one replica's
    gradients at a time on a lone CPU device); cost per replica relative to S separate
    steps, t_S / (S t_1).
  - matmul: this machine's square matmul GFLOP/s (--matmul_size, in --compute_dtype, at
    --matmul_precision; on a GPU, JAX's default precision computes float32 matmuls in TF32).
With --peak_tflops (the chip's datasheet peak for the compute dtype, e.g. an H200's
dense TF32 495 or bfloat16 989) the JSON adds the fraction of it that the M2 step's
useful FLOPs and the matmul reach. On a CUDA machine the PyTorch peer runs on the GPU.
Useful GFLOP/s counts the smallest exact computation of the M2 bound and its
gradient: x W_x once per image, the K label branches past it, x3 for the backward
pass; XLA's own count (cost_analysis) is printed beside it. Timings only; nothing
here asserts a speed.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from untapped_jax import host_memory

_JSON = flags.DEFINE_bool("json", False, "End with one JSON line of the figures.")
_TINY = flags.DEFINE_bool("tiny", False, "Tiny batches and steps (tests).")
_UNLABELED = flags.DEFINE_integer("unlabeled_batch", 200, "Unlabeled images per step.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps, after compilation and warm-up.")
_POPULATIONS = flags.DEFINE_list("populations", ["1", "2", "4", "8"], "Replica counts S.")
_LABELED = flags.DEFINE_integer("labeled_batch", -1,
                                "Labeled images per step (-1: the config's, 100).")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 1024, "Side of the square matmul.")
_DTYPE = flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"],
                           "model.compute_dtype of the JAX steps, the matmul's dtype, and "
                           "the PyTorch peer's (bfloat16: under torch.autocast).")
_PRECISION = flags.DEFINE_string(
    "matmul_precision", "default", "model.matmul_precision of the JAX steps and the "
    "matmul's precision ('default': the backend's, TF32 on recent NVIDIA GPUs; 'float32').")
_PEAK = flags.DEFINE_float("peak_tflops", 0.0, "The chip's peak TFLOP/s for the compute "
                           "dtype (0: no fraction reported).")
_TORCH = flags.DEFINE_bool("torch", True, "Measure the PyTorch peer when torch is installed.")
_ONLY = flags.DEFINE_string("only", "", "Internal: measure one thing, print its JSON.")

def bench_config(model_name: str, *, unlabeled_batch: int, tiny: bool, labeled_batch: int = -1,
                 compute_dtype: str = "float32", xla_cpu_ynnpack: bool = False,
                 replicas_per_pass: int = 0, matmul_precision: str = "default"):
  from untapped_jax.configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.model_name = model_name
  c.train.xla_cpu_ynnpack = xla_cpu_ynnpack
  c.train.replicas_per_pass = replicas_per_pass
  c.data.unlabeled_batch_size = unlabeled_batch
  if labeled_batch > 0:
    c.data.labeled_batch_size = c.data.label_only_batch_size = labeled_batch
  c.model.compute_dtype = compute_dtype
  c.model.matmul_precision = matmul_precision
  if tiny:
    c.model.hidden, c.model.latent_dim = (32,), 4
    c.data.labeled_batch_size = c.data.label_only_batch_size = 4
    c.data.unlabeled_batch_size = min(unlabeled_batch, 8)
  return c


def mlp_macs(sizes) -> int:
  return sum(a * b for a, b in zip(sizes, sizes[1:]))


def useful_forward_flops(config) -> float:
  """Forward FLOPs of the smallest exact M2 step: the classifier and x W_x once per
  image, the rest of the encoder and the decoder once per (image, label)."""
  m, d = config.model, config.data
  h, k = tuple(m.hidden), m.num_classes
  classifier = mlp_macs([m.num_pixels, *h, k])
  encoder_x = m.num_pixels * h[0]
  encoder_rest = k * h[0] + mlp_macs([*h, 2 * m.latent_dim])
  decoder = mlp_macs([k + m.latent_dim, *h, m.num_pixels])
  per_labeled = classifier + encoder_x + encoder_rest + decoder
  per_unlabeled = classifier + encoder_x + k * (encoder_rest + decoder)
  return 2.0 * (d.labeled_batch_size * per_labeled + d.unlabeled_batch_size * per_unlabeled)


def synthetic_batch(config, num_replicas: int, num_images: int):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  d, k = config.data, config.model.num_classes
  labels = lambda n: np.eye(k, dtype=np.float32)[rng.integers(0, k, (num_replicas, n))]
  rows = lambda n: rng.integers(0, num_images, (num_replicas, n)).astype(np.int32)
  return {"labeled": {"index": rows(d.labeled_batch_size), "y": labels(d.labeled_batch_size)},
          "unlabeled": {"index": rows(d.unlabeled_batch_size)},
          "label_only": {"y": labels(d.label_only_batch_size)}}


def time_calls(fn, steps: int) -> float:
  """Seconds per call after two warm-up calls; fn() returns something to block on."""
  import jax  # pylint: disable=g-import-not-at-top
  for _ in range(2):
    jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def step_and_inputs(model_name: str, num_replicas: int, *, unlabeled_batch, tiny,
                    labeled_batch=-1, compute_dtype="float32", xla_cpu_ynnpack=False,
                    replicas_per_pass=0, matmul_precision="default"):
  """(config, the jitted train step, its arguments (state, batch, numbers, images)): S
  replicas of the default networks on one synthetic batch already on the device; on the
  CPU compiled as the package does (train.xla_cpu_ynnpack) unless told otherwise, its
  replicas `replicas_per_pass` at a time (train.replicas_per_pass; 0: all at once)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from untapped_jax import objective  # pylint: disable=g-import-not-at-top
  from untapped_jax import train  # pylint: disable=g-import-not-at-top
  from untapped_jax import train_state  # pylint: disable=g-import-not-at-top
  config = bench_config(model_name, unlabeled_batch=unlabeled_batch, tiny=tiny,
                        labeled_batch=labeled_batch, compute_dtype=compute_dtype,
                        xla_cpu_ynnpack=xla_cpu_ynnpack, replicas_per_pass=replicas_per_pass,
                        matmul_precision=matmul_precision)
  created = [train_state.create_train_state(config, seed=s) for s in range(num_replicas)]
  graphdef, tx = created[0][:2]
  state = train_state.stack([s for _, _, s in created])
  sizes = dict(num_labeled=100, num_unlabeled=50000, num_label_only=50000)
  numbers = jax.device_put(train_state.stack([objective.loss_numbers(
      config, pixel_probs=np.full(config.model.num_pixels, 0.2, np.float32), **sizes)
  ] * num_replicas))
  images = jax.device_put(np.random.default_rng(1).integers(
      0, 256, (5000, config.model.num_pixels), dtype=np.uint8))
  batch = jax.device_put(synthetic_batch(config, num_replicas, len(images)))
  step = train.make_train_step(config, graphdef, tx)
  return config, step, (state, batch, numbers, images)


def measure_jax(model_name: str, num_replicas: int, *, unlabeled_batch, steps, tiny,
                labeled_batch=-1, compute_dtype="float32", matmul_precision="default", **_):
  config, step, (state, *inputs) = step_and_inputs(
      model_name, num_replicas, unlabeled_batch=unlabeled_batch, tiny=tiny,
      labeled_batch=labeled_batch, compute_dtype=compute_dtype,
      matmul_precision=matmul_precision)
  compiled = step.lower(state, *inputs).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  holder = {"state": state}

  def call():
    holder["state"], metrics = step(holder["state"], *inputs)
    return metrics["loss"]

  seconds = time_calls(call, steps)
  return {"seconds": seconds, "xla_flops": float(cost.get("flops", float("nan"))),
          "useful_flops": 3 * useful_forward_flops(config) * num_replicas,
          "unlabeled_per_step": config.data.unlabeled_batch_size * num_replicas}


def torch_step_and_inputs(compile_step: bool, *, unlabeled_batch, tiny, labeled_batch=-1,
                          compute_dtype="float32"):
  """(config, run) for benchmarks/torch_m2.py's M2 on one synthetic batch: run(n) takes
  n Adam steps, waits for the device and returns the last loss; compute_dtype 'bfloat16'
  runs them under torch.autocast."""
  import torch  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_m2  # pylint: disable=g-import-not-at-top
  config = bench_config("m2", unlabeled_batch=unlabeled_batch, tiny=tiny,
                        labeled_batch=labeled_batch)
  m, d = config.model, config.data
  device = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  torch.manual_seed(0)
  model = torch_m2.TorchM2(num_pixels=m.num_pixels, num_classes=m.num_classes,
                           latent_dim=m.latent_dim, hidden=m.hidden[0]).to(device)
  step = torch_m2.make_step(model, compile_step=compile_step, compute_dtype=compute_dtype)
  binary = lambda n: torch.bernoulli(torch.full((n, m.num_pixels), 0.2, device=device))
  xl, xu = binary(d.labeled_batch_size), binary(d.unlabeled_batch_size)
  yl = torch.nn.functional.one_hot(torch.randint(0, m.num_classes, (len(xl),), device=device),
                                   m.num_classes).float()

  def run(n: int) -> float:
    for _ in range(n):
      loss = step(xl, yl, xu)
    sync()
    return float(loss.detach())

  return config, run


def measure_torch(compile_step: bool, *, unlabeled_batch, steps, tiny, labeled_batch=-1,
                  compute_dtype="float32", **_):
  import torch  # pylint: disable=g-import-not-at-top
  config, run = torch_step_and_inputs(compile_step, unlabeled_batch=unlabeled_batch,
                                      tiny=tiny, labeled_batch=labeled_batch,
                                      compute_dtype=compute_dtype)
  run(3)  # torch.compile compiles on the first calls
  start = time.perf_counter()
  run(steps)
  seconds = (time.perf_counter() - start) / steps
  return {"seconds": seconds, "useful_flops": 3 * useful_forward_flops(config),
          "unlabeled_per_step": config.data.unlabeled_batch_size,
          "threads": torch.get_num_threads()}


def measure_matmul(*, steps, matmul_size=1024, compute_dtype="float32",
                   matmul_precision="default", **_):
  import jax  # pylint: disable=g-import-not-at-top
  from untapped_jax import models  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (matmul_size, matmul_size), compute_dtype)
  precision = models.matmul_precision(matmul_precision)
  # float32 sums whatever the operands, as accelerators' peaks are quoted and as the
  # bfloat16 policies' layers ask (XLA:CPU runs a bfloat16 dot with a bfloat16 result at
  # float32's rate, off the CPU's bfloat16 units).
  matmul = jax.jit(lambda a: jax.numpy.matmul(a, a, precision=precision,
                                              preferred_element_type=jax.numpy.float32))
  seconds = time_calls(lambda: matmul(a), max(steps, 20))
  return {"seconds": seconds, "gflops": 2 * matmul_size**3 / seconds / 1e9,
          "size": matmul_size, "dtype": compute_dtype, "matmul_precision": matmul_precision}


def measure(what: str, **kw) -> dict:
  if what == "matmul":
    out = measure_matmul(**kw)
  elif what.startswith("torch_"):
    out = measure_torch(what == "torch_compile", **kw)
  else:  # jax_<model>_s<S>
    _, model_name, replicas = what.split("_")
    out = measure_jax(model_name, int(replicas[1:]), **kw)
  out["peak_rss_mb"] = host_memory.peak_resident_mb()
  import jax  # pylint: disable=g-import-not-at-top
  out["device"] = f"{jax.devices()[0].device_kind} x{jax.device_count()}"
  if what.startswith("torch_"):
    import torch  # pylint: disable=g-import-not-at-top
    out["device"] = (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
  return out


def run_isolated(what: str) -> dict | None:
  cmd = [sys.executable, os.path.abspath(__file__), f"--only={what}",
         f"--unlabeled_batch={_UNLABELED.value}", f"--steps={_STEPS.value}",
         f"--tiny={_TINY.value}", f"--labeled_batch={_LABELED.value}",
         f"--matmul_size={_MATMUL_SIZE.value}", f"--compute_dtype={_DTYPE.value}",
         f"--matmul_precision={_PRECISION.value}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode:
    print(f"{what}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
    return None
  return json.loads(proc.stdout.strip().splitlines()[-1])


def torch_available() -> bool:
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    return True
  except Exception:  # pylint: disable=broad-except  (a half-installed torch raises OSError)
    return False


def main(argv):
  del argv
  host_memory.keep_freed_memory()  # as the package's entry points, before JAX's threads
  from untapped_jax import models  # pylint: disable=g-import-not-at-top
  try:
    models.matmul_precision(_PRECISION.value)
  except ValueError as e:
    print(f"throughput: --{str(e).removeprefix('model.')}", file=sys.stderr)
    sys.exit(2)
  kw = dict(unlabeled_batch=_UNLABELED.value, steps=_STEPS.value, tiny=_TINY.value,
            labeled_batch=_LABELED.value, matmul_size=_MATMUL_SIZE.value,
            compute_dtype=_DTYPE.value, matmul_precision=_PRECISION.value)
  if _ONLY.value:
    print(json.dumps(measure(_ONLY.value, **kw)))
    return
  populations = [int(s) for s in _POPULATIONS.value]
  if 1 not in populations:
    populations = [1, *populations]
  names = ["matmul", "jax_untapped_s1", *[f"jax_m2_s{s}" for s in populations]]
  if _TORCH.value and torch_available():
    names += ["torch_eager"] + ([] if _TINY.value else ["torch_compile"])
  if _TINY.value:  # figures, never timings: the processes may share the cores
    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
      figures = dict(zip(names, pool.map(run_isolated, names)))
  else:  # one at a time, so no measurement shares the machine with another
    figures = {name: run_isolated(name) for name in names}
  print(table(figures))
  if _JSON.value:
    print(json.dumps(summary(figures, populations)))


def per_s(figure) -> float | None:
  return figure["unlabeled_per_step"] / figure["seconds"] if figure else None


def summary(figures, populations) -> dict:
  m2 = figures["jax_m2_s1"]
  out = {"device": m2["device"] if m2 else "", "unlabeled_batch": _UNLABELED.value,
         "labeled_batch": _LABELED.value, "compute_dtype": _DTYPE.value,
         "matmul_precision": _PRECISION.value,
         "jax_examples_per_s": per_s(m2),
         "jax_untapped_examples_per_s": per_s(figures["jax_untapped_s1"]),
         "torch_eager_examples_per_s": per_s(figures.get("torch_eager")),
         "torch_compile_examples_per_s": per_s(figures.get("torch_compile")),
         "matmul_gflops": figures["matmul"]["gflops"] if figures["matmul"] else None,
         "useful_gflops": m2["useful_flops"] / m2["seconds"] / 1e9 if m2 else None}
  if _PEAK.value > 0:
    peak = _PEAK.value * 1e3
    out["useful_fraction_of_peak"] = out["useful_gflops"] / peak if m2 else None
    out["matmul_fraction_of_peak"] = (out["matmul_gflops"] / peak
                                      if out["matmul_gflops"] else None)
    largest = max(populations)
    f = figures[f"jax_m2_s{largest}"]
    out[f"vmap{largest}_useful_fraction_of_peak"] = (
        f["useful_flops"] / f["seconds"] / 1e9 / peak if f else None)
  for s in populations:
    f = figures[f"jax_m2_s{s}"]
    out[f"vmap{s}_per_seed_cost_ratio"] = (f["seconds"] / (s * m2["seconds"])
                                           if f and m2 else None)
  return out


def table(figures) -> str:
  lines = ["| measurement | ms / step | unlabeled ex/s | useful GFLOP/s | XLA GFLOP/step "
           "| peak RSS MB |", "|---|---|---|---|---|---|"]
  for name, f in figures.items():
    if f is None:
      lines.append(f"| {name} | failed | | | | |")
      continue
    if name == "matmul":
      dtype = {"float32": "f32", "bfloat16": "bf16"}[f["dtype"]]
      lines.append(f"| matmul {f['size']}² {dtype} | {1e3 * f['seconds']:.2f} | "
                   f"| {f['gflops']:.0f} | | {f['peak_rss_mb']:.0f} |")
      continue
    xla = f"{f['xla_flops'] / 1e9:.3f}" if "xla_flops" in f else ""
    lines.append(f"| {name} | {1e3 * f['seconds']:.2f} | {per_s(f):,.0f} | "
                 f"{f['useful_flops'] / f['seconds'] / 1e9:.0f} | {xla} | "
                 f"{f['peak_rss_mb']:.0f} |")
  device = next((f["device"] for f in figures.values() if f), "")
  return f"device: {device}\n" + "\n".join(lines)


if __name__ == "__main__":
  app.run(main)
