r"""Pyro's SS-VAE example against our M2, epoch for epoch, in one process.

  pip install -e '.[bench]'   # torch and pyro-ppl
  python benchmarks/pyro_epochs.py [--labels 3000] [--epochs 3] [--json]
      [--matmul_precision BF16_BF16_F32]

Pyro's semi-supervised VAE tutorial (pyro.ai/examples/ss-vae.html, its third variant: y
summed out by parallel enumeration, plus the auxiliary classification loss) with the
settings of its example's command line: one hidden layer of 500 softplus units, z of 50,
batches of 200, Adam at 4.2e-4 with beta1 0.95, auxiliary multiplier 46, grey levels as
the Bernoulli targets, outputs clipped to [1e-7, 1 - 1e-7]; every int(50,000 / labels)-th
batch of an epoch is a labeled one (two SVI steps: the labeled ELBO, then the auxiliary
loss) until the labeled set is used up. Written here from the tutorial's description; the
model, guide and epoch loop are PyTorch + Pyro as a Pyro user would write them.

Ours: `m2_benchmark.py:labels=N` as `untapped-train` runs it (batches of 100 labeled +
100 unlabeled, one jitted step), an epoch being one pass over the unlabeled images; with
--matmul_precision, at that model.matmul_precision (Pyro stays in float32: the goal is
its speed at equal or better accuracy).

Both train on the same split (our seed's labeled and unlabeled images; 10k validation
images held out of the 60k) and take turns, one epoch each, so the host's drift hits both
alike; the paired ratio is taken epoch by epoch. Reported: seconds per epoch (training
steps only, no evaluation) and the test accuracy of each classifier after every epoch.
Timings only; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

from untapped_jax import host_memory

_LABELS = flags.DEFINE_integer("labels", 3000, "Labeled images, balanced over the digits.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs each.")
_SEED = flags.DEFINE_integer("seed", 0, "Split, initialisation and data order of both.")
_PRECISION = flags.DEFINE_string("matmul_precision", "default",
                                  "Our model.matmul_precision ('BF16_BF16_F32': bfloat16 "
                                  "products, float32 sums).")
_DATA_DIR = flags.DEFINE_string("data_dir", os.environ.get("UNTAPPED_DATA_DIR", ""),
                                "MNIST's IDX folder (default: $UNTAPPED_DATA_DIR).")
_MAX_BATCHES = flags.DEFINE_integer("max_batches", 0, "> 0: cut each epoch to this many "
                                    "of our steps and Pyro's batches (tests).")
_JSON = flags.DEFINE_bool("json", False, "End with one JSON line of the figures.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYRO_BATCH = 200
PAUSE_S = 1.0  # between turns, for the other runtime's worker threads to stop spinning
PYRO_LR, PYRO_BETA1, PYRO_AUX, PYRO_CLIP = 4.2e-4, 0.95, 46.0, 1e-7


def ours(labels: int, seed: int, data_dir: str, max_batches: int,
         matmul_precision: str = "default"):
  """(run_epoch(e) -> seconds, test_accuracy() -> float, splits) of our M2 benchmark."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from untapped_jax import objective, train, train_state  # pylint: disable=g-import-not-at-top
  from untapped_jax.data import mnist, splits as splits_lib, streams as streams_lib  # pylint: disable=g-import-not-at-top
  from untapped_jax.evaluate import heldout  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "m2_benchmark", os.path.join(REPO, "experiments", "configs", "m2_benchmark.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"labels={labels}")
  config.seed, config.data.source, config.data.dir = seed, "folder", data_dir
  config.model.matmul_precision = matmul_precision
  data = mnist.load(config.data)
  splits = splits_lib.make_splits(data, config.data, seed=seed)
  streams = streams_lib.make_streams(splits, config, seed=seed)
  graphdef, tx, state = train_state.create_train_state(config, seed=seed)
  holder = {"state": train_state.stack([state])}
  step = train.make_train_step(config, graphdef, tx)
  numbers = train_state.stack([objective.numbers_for_splits(config, splits)])
  images = jax.device_put(data["train_images"])
  steps = len(splits.unlabeled) // config.data.unlabeled_batch_size
  steps = min(steps, max_batches) if max_batches else steps
  batch = lambda s: train_state.stack([streams_lib.batch_at(streams, s)], xp=np)
  holder["state"], _ = step(holder["state"], batch(0), numbers, images)  # compiles
  jax.block_until_ready(holder["state"])

  def run_epoch(epoch: int) -> float:
    start = time.perf_counter()
    for s in range(1 + epoch * steps, 1 + (epoch + 1) * steps):
      holder["state"], _ = step(holder["state"], batch(s), numbers, images)
    jax.block_until_ready(holder["state"])
    return time.perf_counter() - start

  def test_accuracy() -> float:
    params = train_state.unstack(holder["state"].params, 0)
    return heldout.evaluate(graphdef, params, splits.test, batch_size=1000,
                            binarization=config.data.binarization, seed=seed)["accuracy"]

  return run_epoch, test_accuracy, splits


def pyro_peer(splits, seed: int, max_batches: int, batch_size: int = PYRO_BATCH):
  """(run_epoch(e) -> seconds, test_accuracy() -> float) of Pyro's SS-VAE on `splits`
  (batch_size must divide the labeled set, as the example asserts)."""
  import pyro  # pylint: disable=g-import-not-at-top
  import pyro.distributions as dist  # pylint: disable=g-import-not-at-top
  from pyro import poutine  # pylint: disable=g-import-not-at-top
  from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO, config_enumerate  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  pyro.set_rng_seed(seed)
  pyro.clear_param_store()
  as_float = lambda a: torch.from_numpy(np.asarray(a, np.float32) / 255.0)
  one_hot = lambda labels: torch.from_numpy(np.eye(10, dtype=np.float32)[labels])
  x_sup, y_sup = as_float(splits.labeled.images), one_hot(splits.labeled.labels)
  x_unsup = as_float(splits.unlabeled.images)
  x_test, y_test = as_float(splits.test.images), torch.from_numpy(splits.test.labels)

  def mlp(din, dout):
    return nn.Sequential(nn.Linear(din, 500), nn.Softplus(), nn.Linear(500, dout))

  def cat(a, b):  # [x, y] with y's enumeration dimension broadcast
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(shape + a.shape[-1:]), b.expand(shape + b.shape[-1:])], -1)

  class SSVAE(nn.Module):
    def __init__(self):
      super().__init__()
      self.encoder_y, self.encoder_z, self.decoder = mlp(784, 10), mlp(794, 100), mlp(60, 784)

    def class_probs(self, xs):
      return torch.softmax(self.encoder_y(xs), -1).clamp(PYRO_CLIP, 1 - PYRO_CLIP)

    def model(self, xs, ys=None):
      pyro.module("ss_vae", self)
      with pyro.plate("data", xs.shape[0]):
        zs = pyro.sample("z", dist.Normal(xs.new_zeros(xs.shape[0], 50), 1.0).to_event(1))
        ys = pyro.sample("y", dist.OneHotCategorical(xs.new_ones(10) / 10), obs=ys)
        probs = torch.sigmoid(self.decoder(cat(zs, ys))).clamp(PYRO_CLIP, 1 - PYRO_CLIP)
        # Grey levels as targets, as the example: not a Bernoulli sample, so not validated.
        pyro.sample("x", dist.Bernoulli(probs, validate_args=False).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
      with pyro.plate("data", xs.shape[0]):
        if ys is None:
          ys = pyro.sample("y", dist.OneHotCategorical(self.class_probs(xs)))
        loc, log_scale = self.encoder_z(cat(xs, ys)).chunk(2, -1)
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    def model_classify(self, xs, ys):
      pyro.module("ss_vae", self)
      with pyro.plate("data", xs.shape[0]), poutine.scale(scale=PYRO_AUX):
        pyro.sample("y_aux", dist.OneHotCategorical(self.class_probs(xs)), obs=ys)

    def guide_classify(self, xs, ys):
      del xs, ys

  vae = SSVAE()
  optimizer = pyro.optim.Adam({"lr": PYRO_LR, "betas": (PYRO_BETA1, 0.999)})
  elbo = SVI(vae.model, config_enumerate(vae.guide, "parallel", expand=True), optimizer,
             loss=TraceEnum_ELBO(max_plate_nesting=1))
  aux = SVI(vae.model_classify, vae.guide_classify, optimizer, loss=Trace_ELBO())
  order = np.random.default_rng(seed)
  interval = int(50000 / len(x_sup))

  def run_epoch(epoch: int) -> float:
    del epoch
    sup = torch.from_numpy(order.permutation(len(x_sup)))
    unsup = torch.from_numpy(order.permutation(len(x_unsup)))
    sup_batches = [sup[i:i + batch_size] for i in range(0, len(sup), batch_size)]
    unsup_batches = [unsup[i:i + batch_size] for i in range(0, len(unsup), batch_size)]
    total = len(sup_batches) + len(unsup_batches)
    total = min(total, max_batches) if max_batches else total
    start, used_sup, used_unsup = time.perf_counter(), 0, 0
    for i in range(total):
      if i % interval == 1 and used_sup < len(sup_batches):
        rows, used_sup = sup_batches[used_sup], used_sup + 1
        elbo.step(x_sup[rows], y_sup[rows])
        aux.step(x_sup[rows], y_sup[rows])
      else:
        rows, used_unsup = unsup_batches[used_unsup], used_unsup + 1
        elbo.step(x_unsup[rows])
    return time.perf_counter() - start

  def test_accuracy() -> float:
    with torch.no_grad():
      return float((vae.encoder_y(x_test).argmax(-1) == y_test).float().mean())

  return run_epoch, test_accuracy


def main(argv):
  del argv
  host_memory.keep_freed_memory()  # as the package's entry points, before JAX's threads
  if not _DATA_DIR.value:
    print("pyro_epochs: --data_dir or $UNTAPPED_DATA_DIR must name MNIST's IDX folder.",
          file=sys.stderr)
    sys.exit(2)
  try:
    import pyro  # pylint: disable=g-import-not-at-top,unused-import
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"pyro_epochs: {e.name} is not installed; the peer needs torch and pyro-ppl "
          "(pip install -e '.[bench]').", file=sys.stderr)
    sys.exit(2)
  our_epoch, our_accuracy, splits = ours(_LABELS.value, _SEED.value, _DATA_DIR.value,
                                         _MAX_BATCHES.value, _PRECISION.value)
  pyro_epoch, pyro_accuracy = pyro_peer(splits, _SEED.value, _MAX_BATCHES.value)
  rows = []
  for epoch in range(_EPOCHS.value):
    time.sleep(PAUSE_S)
    pyro_s = pyro_epoch(epoch)
    time.sleep(PAUSE_S)
    our_s = our_epoch(epoch)
    rows.append({"epoch": epoch + 1, "pyro_s": pyro_s, "ours_s": our_s,
                 "pyro_test_accuracy": pyro_accuracy(), "ours_test_accuracy": our_accuracy()})
  ratios = [r["pyro_s"] / r["ours_s"] for r in rows]
  print(f"{_LABELS.value} labels, seed {_SEED.value}, torch threads {torch.get_num_threads()}, "
        f"our matmul_precision {_PRECISION.value}; seconds of training per epoch, test "
        "accuracy after it")
  print("| epoch | Pyro s | ours s | Pyro / ours | Pyro test accuracy | ours test accuracy |")
  print("|---|---|---|---|---|---|")
  for r, ratio in zip(rows, ratios):
    print(f"| {r['epoch']} | {r['pyro_s']:.1f} | {r['ours_s']:.1f} | {ratio:.2f} | "
          f"{r['pyro_test_accuracy']:.4f} | {r['ours_test_accuracy']:.4f} |")
  print(f"median Pyro / ours per epoch: {float(np.median(ratios)):.2f}")
  if _JSON.value:
    print(json.dumps({"labels": _LABELS.value, "seed": _SEED.value,
                      "torch_threads": torch.get_num_threads(),
                      "matmul_precision": _PRECISION.value, "epochs": rows,
                      "median_ratio": float(np.median(ratios))}))


if __name__ == "__main__":
  app.run(main)
