r"""Train steps timed in turns in one process: JAX under several XLA option sets, and PyTorch.

  python benchmarks/paired_steps.py [--model m2] [--unlabeled_batch 200] [--rounds 8] [--json]
  python benchmarks/paired_steps.py --matmul [--matmul_size 1024]   # useful GFLOP/s, paired
  python benchmarks/paired_steps.py --notorch --replicas 1,2,4 [--replicas_per_pass 4]
      [--population_matmul_precision BF16_BF16_F32]
  python benchmarks/paired_steps.py --notorch --variants '{"default": {}, "no_ynnpack":
      {"xla_cpu_experimental_ynn_fusion_type": ""}}'

This machine's speed drifts within minutes (one M2 step measured 94 to 129 ms in one hour,
docs/benchmarks.md), so figures from separate processes, as throughput.py's, also compare
the host's moments. Here everything runs in one process and takes turns: in each of
--rounds rounds, each entry runs 2 untimed and --calls timed steps, and its ratio to the
first entry is taken round by round (paired); medians are printed. The entries:
  - each JAX variant: the same lowered train step compiled with its options as XLA's
    compile options (the debug options XLA_FLAGS would set; enum values by name, e.g.
    LIBRARY_FUSION_TYPE_DOT). Every variant trains its own copy of one state on one batch,
    so after the same steps their losses differ only by float rounding: the table shows
    the largest relative difference from the first, so an option that changed the maths
    would show;
  - torch_eager and torch_compile (--model m2, with torch installed): throughput.py's
    PyTorch peer on the same batch sizes;
  - population_S (--replicas 1,2,4): the package's own step over S replicas, with its
    cost per replica against population_1, t_S / (S t_1), paired round by round;
    population_S_per_pass_P for each P of --replicas_per_pass up to S > 1: the same with
    train.replicas_per_pass=P (P = S: all S in one vmap, the accelerators' default);
  - with --matmul (--model m2), matmul_N: a jitted float32 N x N matmul (--matmul_size),
    this machine's matmul rate, timed in the same turns; every M2 step entry then gets
    its useful GFLOP/s (throughput.py's count of the smallest exact step) and their
    fraction of the matmul's, paired round by round;
  - with --bfloat16, the precision policy's: bfloat16 and bfloat16_ynnpack, the package's
    step under model.compute_dtype='bfloat16' (without YNNPACK, the package's CPU default,
    and with it); bfloat16_matmuls, under model.matmul_precision='BF16_BF16_F32' (bfloat16
    products, float32 sums and activations, as autocast); and torch_eager_bfloat16 /
    torch_compile_bfloat16, the PyTorch peer under torch.autocast.
A short sleep between turns lets the other runtime's worker threads stop spinning. Timings
only; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

from untapped_jax import host_memory  # pylint: disable=g-import-not-at-top,wrong-import-position

# On the CPU: XLA's default sends dots, reductions and some elementwise fusions to
# YNNPACK; the others keep only the GEMMs in a library, or none.
CPU_VARIANTS = {
    "xla_default": {},
    "no_ynnpack": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "ynnpack_dots_only": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "xnnpack_dots": {"xla_cpu_experimental_ynn_fusion_type": "",
                     "xla_cpu_experimental_xnn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
    "onednn_dots": {"xla_cpu_experimental_ynn_fusion_type": "",
                    "xla_cpu_experimental_onednn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
}
TORCH_ENTRIES = ("torch_eager", "torch_compile")
# name: the package's step settings (throughput.step_and_inputs) of each --bfloat16 entry
BFLOAT16_ENTRIES = {
    "bfloat16": {"compute_dtype": "bfloat16"},
    "bfloat16_ynnpack": {"compute_dtype": "bfloat16", "xla_cpu_ynnpack": True},
    "bfloat16_matmuls": {"matmul_precision": "BF16_BF16_F32"},
}
PAUSE_S = 0.2

_MODEL = flags.DEFINE_enum("model", "m2", ["m2", "untapped"], "Whose train step.")
_ROUNDS = flags.DEFINE_integer("rounds", 8, "Rounds of turns.")
_CALLS = flags.DEFINE_integer("calls", 5, "Timed steps per entry and round.")
_REPLICAS = flags.DEFINE_list(
    "replicas", [], "Replica counts S: adds a population_S entry each (the package's own "
    "step, S replicas) and its cost per replica against population_1, paired.")
_PER_PASS = flags.DEFINE_list(
    "replicas_per_pass", [], "More train.replicas_per_pass values P: adds a "
    "population_S_per_pass_P entry for each S > 1 of --replicas beside the default's.")
_POPULATION_PRECISION = flags.DEFINE_string(
    "population_matmul_precision", "default", "model.matmul_precision of the population_S "
    "entries (e.g. BF16_BF16_F32: bfloat16 matmuls, whose cost per replica is then paired "
    "against population_1 under the same policy).")
_BFLOAT16 = flags.DEFINE_bool(
    "bfloat16", False, "Add the precision policy's entries: the package's step under "
    "model.compute_dtype='bfloat16', without and with YNNPACK, and under "
    "model.matmul_precision='BF16_BF16_F32', and (--model m2) the PyTorch peer under "
    "torch.autocast(bfloat16).")
_MATMUL = flags.DEFINE_bool(
    "matmul", False, "Add matmul_N, a float32 N x N matmul (N: --matmul_size) timed in the "
    "same turns, and each M2 step entry's useful GFLOP/s as a fraction of its rate, paired.")
_VARIANTS = flags.DEFINE_string("variants", "", "JSON {name: {option: value}}; the first "
                                "is the reference (default: CPU_VARIANTS).")
# --unlabeled_batch, --labeled_batch, --tiny, --json and --torch are throughput.py's flags.
_UNLABELED, _LABELED, _TINY, _JSON, _TORCH, _MATMUL_SIZE = (
    throughput._UNLABELED, throughput._LABELED, throughput._TINY,  # pylint: disable=protected-access
    throughput._JSON, throughput._TORCH, throughput._MATMUL_SIZE)  # pylint: disable=protected-access


def parse_variants(text: str) -> dict[str, dict[str, str]]:
  """{name: {XLA option: value}} from --variants' JSON; names what is wrong."""
  if not text:
    return CPU_VARIANTS
  try:
    variants = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"--variants={text!r} is not JSON ({e}); expected "
                     '{"name": {"xla_option": "value"}, ...}.') from e
  if not isinstance(variants, dict) or not variants or not all(
      isinstance(v, dict) for v in variants.values()):
    raise ValueError(f"--variants={text!r}: expected a non-empty JSON object of "
                     '{"name": {"xla_option": "value"}}.')
  clash = sorted(set(variants) & {*TORCH_ENTRIES, *BFLOAT16_ENTRIES,
                                   *(f"{name}_bfloat16" for name in TORCH_ENTRIES)})
  if clash:
    raise ValueError(f"--variants names {clash}, the other entries' names; rename them.")
  return {name: {k: str(v) for k, v in options.items()} for name, options in variants.items()}


def step_runner(step, state, inputs):
  """run(n): n steps of `step` from its own `state` on `inputs`; returns the last loss."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  holder = {"state": state}

  def run(n):
    for _ in range(n):
      holder["state"], metrics = step(holder["state"], *inputs)
    return float(np.asarray(jax.block_until_ready(metrics)["loss"]).reshape(-1)[0])

  return run


def jax_runners(variants, *, model, unlabeled_batch, labeled_batch, tiny):
  """({name: run}, {name: compile seconds}); run(n) takes n steps, returns the last loss."""
  import jax  # pylint: disable=g-import-not-at-top
  # Lowered without the package's own CPU option, so that each variant's options are
  # all it is compiled with and "xla_default" is XLA's default.
  _, step, (state, *inputs) = throughput.step_and_inputs(
      model, 1, unlabeled_batch=unlabeled_batch, labeled_batch=labeled_batch, tiny=tiny,
      xla_cpu_ynnpack=True)
  lowered = step.lower(state, *inputs)
  runners, compile_s = {}, {}
  for name, options in variants.items():
    start = time.perf_counter()
    try:
      compiled = lowered.compile(compiler_options=options or None)
    except Exception as e:  # pylint: disable=broad-except  (XLA's own error for a bad option)
      raise ValueError(f"variant {name!r} ({options}): XLA refused it: "
                       f"{str(e).splitlines()[0]}") from e
    compile_s[name] = time.perf_counter() - start
    runners[name] = step_runner(compiled, jax.tree.map(lambda a: a.copy(), state), inputs)
  return runners, compile_s


def package_step_runner(model, num_replicas, **step_kw):
  """(run, compile seconds): the package's own train step (make_train_step, its own
  compile options) over `num_replicas` replicas; step_kw as throughput.step_and_inputs."""
  _, step, (state, *inputs) = throughput.step_and_inputs(model, num_replicas, **step_kw)
  run = step_runner(step, state, inputs)
  start = time.perf_counter()
  run(1)
  return run, time.perf_counter() - start


def bfloat16_runners(*, model, unlabeled_batch, labeled_batch, tiny):
  """({name: run}, {name: compile seconds}): the package's train step under each of
  BFLOAT16_ENTRIES' settings (float32 parameters), from the variants' initial state."""
  runners, compile_s = {}, {}
  for name, settings in BFLOAT16_ENTRIES.items():
    runners[name], compile_s[name] = package_step_runner(
        model, 1, unlabeled_batch=unlabeled_batch, labeled_batch=labeled_batch, tiny=tiny,
        **settings)
  return runners, compile_s


def population_runners(sizes, *, model, unlabeled_batch, labeled_batch, tiny, per_pass=(),
                       matmul_precision="default"):
  """({name: run}, {name: compile seconds}): the package's train step over S replicas, as
  train_population runs it: population_S with the default train.replicas_per_pass,
  population_S_per_pass_P with P (1 < S, P <= S); all at model.matmul_precision
  `matmul_precision`."""
  runners, compile_s = {}, {}
  entries = [(size, p) for size in sizes for p in (0, *per_pass) if p == 0 or 1 < size >= p]
  for size, p in entries:
    name = f"population_{size}" + (f"_per_pass_{p}" if p else "")
    runners[name], compile_s[name] = package_step_runner(
        model, size, unlabeled_batch=unlabeled_batch, labeled_batch=labeled_batch, tiny=tiny,
        replicas_per_pass=p, matmul_precision=matmul_precision)
  return runners, compile_s


def matmul_runner(size: int):
  """(run, compile seconds, FLOPs per call): run(n) takes n float32 size x size matmuls,
  as throughput.py's matmul row (float32 operands and sums), and returns 0.0."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda a: jnp.matmul(a, a, preferred_element_type=jnp.float32))
  start = time.perf_counter()
  jax.block_until_ready(matmul(a))
  compile_s = time.perf_counter() - start

  def run(n):
    for _ in range(n):
      out = matmul(a)
    jax.block_until_ready(out)
    return 0.0

  return run, compile_s, 2.0 * size**3


def step_flops(name: str, useful_flops: float) -> float | None:
  """Useful FLOPs of one call of entry `name` given one M2 step's: S steps' for a
  population_S entry, none for the matmul."""
  if name.startswith("matmul_"):
    return None
  if name.startswith("population_"):
    return useful_flops * int(name.split("_")[1])
  return useful_flops


def fraction_of_matmul(step_ms, matmul_ms, *, flops: float, matmul_flops: float) -> float:
  """Median over rounds of (flops / step time) / (matmul_flops / matmul time): a step's
  useful FLOP rate against the matmul's timed in the same round."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  step_ms, matmul_ms = np.asarray(step_ms, float), np.asarray(matmul_ms, float)
  return float(np.median((flops / step_ms) / (matmul_flops / matmul_ms)))


def _positive_ints(values, flag: str, expected: str, *, need_one: bool = False) -> list[int]:
  """A list flag's values as positive integers (none given: []); else one ValueError
  naming the flag, its values and `expected`."""
  try:
    ints = [int(v) for v in values]
  except ValueError:
    ints = []
  if values and (not ints or min(ints) < 1 or (need_one and 1 not in ints)):
    raise ValueError(f"--{flag}={','.join(values)}: expected {expected}.")
  return ints


def parse_per_pass(values) -> list[int]:
  """--replicas_per_pass as train.replicas_per_pass values; names what is wrong."""
  return _positive_ints(values, "replicas_per_pass", "positive integers (replicas whose "
                        "gradients one pass computes)")


def parse_replicas(values) -> list[int]:
  """--replicas as replica counts; names what is wrong."""
  return _positive_ints(values, "replicas", "replica counts >= 1 including 1, the lone run "
                        "each population is compared with", need_one=True)


def compare(runners: dict, *, rounds: int, calls: int) -> dict[str, dict]:
  """Per entry: median and min ms per step, the median paired ratio to the first entry,
  and the last loss."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  ms = {name: [] for name in runners}
  loss = {}
  for _ in range(rounds):
    for name, run in runners.items():
      time.sleep(PAUSE_S)
      run(2)
      start = time.perf_counter()
      loss[name] = run(calls)
      ms[name].append((time.perf_counter() - start) / calls * 1e3)
  reference = np.asarray(ms[next(iter(runners))])
  return {name: {"median_ms": float(np.median(t)), "min_ms": float(np.min(t)),
                 "paired_ratio_to_first": float(np.median(np.asarray(t) / reference)),
                 "final_loss": loss[name], "ms": t} for name, t in ms.items()}


def main(argv):
  del argv
  host_memory.keep_freed_memory()  # as the package's entry points, before JAX's threads
  import jax  # pylint: disable=g-import-not-at-top
  try:
    if _MATMUL.value and _MODEL.value != "m2":
      raise ValueError(f"--matmul with --model={_MODEL.value}: the useful FLOPs are counted "
                       "for M2's step only; use --model=m2.")
    if _MATMUL.value and _MATMUL_SIZE.value < 1:
      raise ValueError(f"--matmul_size={_MATMUL_SIZE.value}: expected a positive side.")
    variants = parse_variants(_VARIANTS.value)
    sizes = parse_replicas(_REPLICAS.value)
    per_pass = parse_per_pass(_PER_PASS.value)
    runners, compile_s = jax_runners(variants, model=_MODEL.value,
                                     unlabeled_batch=_UNLABELED.value,
                                     labeled_batch=_LABELED.value, tiny=_TINY.value)
    more, more_s = population_runners(sizes, model=_MODEL.value,
                                      unlabeled_batch=_UNLABELED.value,
                                      labeled_batch=_LABELED.value, tiny=_TINY.value,
                                      per_pass=per_pass,
                                      matmul_precision=_POPULATION_PRECISION.value)
    runners.update(more)
    compile_s.update(more_s)
    if _BFLOAT16.value:
      more, more_s = bfloat16_runners(model=_MODEL.value, unlabeled_batch=_UNLABELED.value,
                                      labeled_batch=_LABELED.value, tiny=_TINY.value)
      runners.update(more)
      compile_s.update(more_s)
  except ValueError as e:
    print(f"paired_steps: {e}", file=sys.stderr)
    sys.exit(2)
  if _MATMUL.value:
    matmul_name = f"matmul_{_MATMUL_SIZE.value}"
    runners[matmul_name], compile_s[matmul_name], matmul_flops = matmul_runner(
        _MATMUL_SIZE.value)
  if _TORCH.value and _MODEL.value == "m2" and throughput.torch_available():
    import torch  # pylint: disable=g-import-not-at-top
    dtypes = ("float32", "bfloat16") if _BFLOAT16.value else ("float32",)
    for name, dtype in [(n, d) for d in dtypes for n in TORCH_ENTRIES]:
      name += "" if dtype == "float32" else f"_{dtype}"
      _, runners[name] = throughput.torch_step_and_inputs(
          name.startswith("torch_compile"), unlabeled_batch=_UNLABELED.value,
          tiny=_TINY.value, labeled_batch=_LABELED.value, compute_dtype=dtype)
      start = time.perf_counter()
      runners[name](3)  # torch.compile compiles on the first calls
      compile_s[name] = time.perf_counter() - start
    threads = torch.get_num_threads()
  else:
    threads = None
  figures = compare(runners, rounds=_ROUNDS.value, calls=_CALLS.value)
  import numpy as np  # pylint: disable=g-import-not-at-top
  first = next(iter(variants))
  for name, f in figures.items():
    f["compile_s"] = compile_s[name]
    if name in variants:
      f["options"] = variants[name]
    if name in variants or name in BFLOAT16_ENTRIES:
      f["loss_relative_difference"] = (abs(f["final_loss"] - figures[first]["final_loss"])
                                       / abs(figures[first]["final_loss"]))
  if sizes:
    lone = np.asarray(figures["population_1"]["ms"])
    for name, f in figures.items():
      if name.startswith("population_"):
        size = int(name.split("_")[1])
        # t_S / (S t_1), round by round: above 1, a replica costs more than a lone run.
        f["per_replica_cost_ratio"] = float(np.median(np.asarray(f["ms"]) / (size * lone)))
  if _MATMUL.value:
    useful = 3 * throughput.useful_forward_flops(throughput.bench_config(
        "m2", unlabeled_batch=_UNLABELED.value, tiny=_TINY.value, labeled_batch=_LABELED.value))
    matmul_ms = figures[matmul_name]["ms"]
    figures[matmul_name]["gflops"] = float(matmul_flops / np.median(matmul_ms) / 1e6)
    for name, f in figures.items():
      flops = step_flops(name, useful)
      if flops is not None:
        f["useful_gflops"] = float(flops / f["median_ms"] / 1e6)
        f["useful_fraction_of_matmul"] = fraction_of_matmul(
            f["ms"], matmul_ms, flops=flops, matmul_flops=matmul_flops)
  out = {"device": f"{jax.devices()[0].device_kind} x{jax.device_count()}",
         "model": _MODEL.value, "torch_threads": threads,
         "steps_per_entry": _ROUNDS.value * (2 + _CALLS.value), "entries": figures}
  print(f"{_MODEL.value} step on {out['device']}, {out['steps_per_entry']} steps per entry "
        f"in turns (PyTorch threads: {threads})")
  print("| entry | median ms / step | min | paired ratio to the first | compile s "
        "| loss, relative difference from the first |")
  print("|---|---|---|---|---|---|")
  for name, f in figures.items():
    if "loss_relative_difference" in f:
      difference = f"{f['loss_relative_difference']:.1e}"
    elif name.startswith("population_"):
      difference = f"per replica {f['per_replica_cost_ratio']:.3f} of population_1"
    elif name.startswith("matmul_"):
      difference = f"{f['gflops']:.0f} GFLOP/s"
    else:
      difference = "other init"
    if "useful_fraction_of_matmul" in f:
      difference += (f"; useful {f['useful_gflops']:.0f} GFLOP/s, "
                     f"{f['useful_fraction_of_matmul']:.2f} of the matmul's, paired")
    print(f"| {name} | {f['median_ms']:.1f} | {f['min_ms']:.1f} | "
          f"{f['paired_ratio_to_first']:.3f} | {f['compile_s']:.1f} | {difference} |")
  if _JSON.value:
    print(json.dumps(out))


if __name__ == "__main__":
  app.run(main)
