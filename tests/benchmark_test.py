"""benchmarks/throughput.py and startup.py run end to end at a tiny size (figures, not timings)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from real_mnist import DATA_DIR
from repo_files import load_module

# Once per process: the script defines absl flags when imported.
paired_steps = load_module(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
                           / "paired_steps.py")

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_throughput_tiny_prints_the_table_and_every_json_key():
  script = [sys.executable, str(REPO / "benchmarks" / "throughput.py")]
  proc = subprocess.run(
      script + ["--tiny", "--json", "--steps=2", "--populations=1,2", "--notorch",
                "--matmul_size=64", "--peak_tflops=1", "--matmul_precision=float32"],
      capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  figures = json.loads(lines[-1])
  assert figures["matmul_precision"] == "float32"
  for key in ("jax_examples_per_s", "jax_untapped_examples_per_s", "matmul_gflops",
              "useful_gflops", "vmap2_per_seed_cost_ratio"):
    assert figures[key] > 0, key
  assert figures["vmap1_per_seed_cost_ratio"] == 1.0
  # Fractions of the given peak (1 TFLOP/s here) are the GFLOP/s over 1000.
  assert figures["matmul_fraction_of_peak"] == figures["matmul_gflops"] / 1e3
  assert figures["useful_fraction_of_peak"] == figures["useful_gflops"] / 1e3
  assert figures["vmap2_useful_fraction_of_peak"] > 0
  # Without the PyTorch peer its figures are null, not made up.
  assert figures["torch_eager_examples_per_s"] is None
  table = "\n".join(lines[:-1])
  assert "| jax_m2_s2 |" in table and "| matmul 64² f32 |" in table
  # A precision JAX has no name for: one line naming it, exit 2, nothing measured.
  proc = subprocess.run(script + ["--matmul_precision=TF32"], capture_output=True, text=True,
                        timeout=600, cwd=REPO)
  assert proc.returncode == 2 and "| measurement |" not in proc.stdout
  assert proc.stderr.strip().splitlines()[-1].startswith("throughput: --matmul_precision='TF32'")


@pytest.mark.slow
def test_paired_steps_compiles_each_variant_and_trains_the_same_losses():
  variants = {"xla_default": {}, "no_ynnpack": {"xla_cpu_experimental_ynn_fusion_type": ""}}
  script = [sys.executable, str(REPO / "benchmarks" / "paired_steps.py"), "--tiny", "--json",
            "--rounds=2", "--calls=2", "--notorch"]
  proc = subprocess.run(script + ["--variants=" + json.dumps(variants), "--replicas=1,2",
                                  "--replicas_per_pass=2", "--matmul", "--matmul_size=64"],
                        capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  # The package's own step over 1 and 2 replicas, each replica's cost against the lone run.
  lone, pair = figures["entries"]["population_1"], figures["entries"]["population_2"]
  assert lone["per_replica_cost_ratio"] == 1.0 and pair["per_replica_cost_ratio"] > 0
  assert len(pair["ms"]) == 2 and "| population_2 |" in proc.stdout
  # On one CPU device the default computes the replicas one at a time; per pass 2 vmaps
  # the two: another program, the same maths.
  vmapped = figures["entries"]["population_2_per_pass_2"]
  assert vmapped["per_replica_cost_ratio"] > 0
  assert "population_1_per_pass_2" not in figures["entries"]
  assert vmapped["final_loss"] == pytest.approx(pair["final_loss"], rel=1e-5)
  assert figures["steps_per_entry"] == 2 * (2 + 2) and figures["torch_threads"] is None
  first, second = figures["entries"]["xla_default"], figures["entries"]["no_ynnpack"]
  assert first["paired_ratio_to_first"] == 1.0 and second["paired_ratio_to_first"] > 0
  assert second["options"] == variants["no_ynnpack"]
  # Eight Adam steps from one state on one batch: other kernels, the same maths.
  assert second["final_loss"] == pytest.approx(first["final_loss"], rel=1e-5)
  assert "| no_ynnpack |" in proc.stdout
  # The 64 x 64 matmul took the same turns; each step's useful rate against it, round by
  # round, from the step's FLOPs counted here by hand (--tiny: 4 labeled + 8 unlabeled
  # images, hidden 32, z of 4; the decoder and the encoder's rest once per label).
  matmul = figures["entries"]["matmul_64"]
  assert len(matmul["ms"]) == 2 and matmul["gflops"] == pytest.approx(
      2 * 64**3 / np.median(matmul["ms"]) / 1e6)
  per_image = 784 * 32 + 32 * 10 + 784 * 32        # classifier, encoder's x half
  per_pair = 10 * 32 + 32 * 8 + 14 * 32 + 32 * 784  # encoder's y half and tail, decoder
  flops = 3 * 2 * (4 * (per_image + per_pair) + 8 * (per_image + 10 * per_pair))
  for name, replicas in [("no_ynnpack", 1), ("population_2", 2)]:
    entry = figures["entries"][name]
    rates = replicas * flops / np.asarray(entry["ms"]) / (2 * 64**3 / np.asarray(matmul["ms"]))
    assert entry["useful_fraction_of_matmul"] == pytest.approx(np.median(rates))
  assert "useful_fraction_of_matmul" not in matmul and "| matmul_64 |" in proc.stdout
  # An option XLA does not know: one line naming the variant, exit 2, no table.
  refused = {"xla_default": {}, "refused": {"xla_cpu_no_such_option": "1"}}
  proc = subprocess.run(script + ["--variants=" + json.dumps(refused)], capture_output=True,
                        text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 2 and "| variant |" not in proc.stdout
  message = proc.stderr.strip().splitlines()[-1]
  assert "'refused'" in message and "xla_cpu_no_such_option" in message


@pytest.mark.slow
def test_startup_runs_its_processes_and_reads_their_timing(tmp_path):
  # Two tiny real runs, an empty compilation cache and the one it wrote (synthetic MNIST
  # where the real one is not given): the table's rows and every figure read from each
  # run's timing.json. ('off' is the same launch with UNTAPPED_COMPILATION_CACHE=off,
  # which compilation_cache_test covers.)
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "startup.py"), "--json", "--phases=warm,cold",
       f"--workdir={tmp_path}", f"--config.data.dir={DATA_DIR}", "--config.train.num_steps=3",
       "--config.train.eval_every=3"],
      capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  assert list(figures) == ["cold", "warm"]
  for phase, f in figures.items():
    assert f["num_steps"] == 3, phase
    for key in ("process_s", "startup_s", "first_step_s", "final_evaluation_s"):
      assert f[key] > 0, (phase, key)
    # The process's own clock sits inside the outside one.
    assert f["startup_s"] + f["first_step_s"] < f["process_s"], phase
    assert (tmp_path / phase / "results.json").exists(), phase
  assert sum(1 for line in proc.stdout.splitlines() if line.startswith(("| cold", "| warm", "| off"))) == 2


@pytest.mark.parametrize("flag,named", [("--config.train.num_stepz=3", "num_stepz"),
                                        ("--phases=warm", "--phases=warm"),
                                        ("--phases=cold,tepid", "--phases=cold,tepid")])
def test_startup_refuses_a_bad_config_before_any_run(tmp_path, flag, named):
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "startup.py"), f"--workdir={tmp_path}", flag],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode != 0 and named in proc.stderr
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("values", [["2", "4"], ["0", "1"], ["one"]])
def test_paired_steps_names_bad_replica_counts(values):
  with pytest.raises(ValueError, match="including 1") as e:
    paired_steps.parse_replicas(values)
  assert ",".join(values) in str(e.value)
  assert paired_steps.parse_replicas(["1", "4"]) == [1, 4]


@pytest.mark.parametrize("values", [["0"], ["-2"], ["two"]])
def test_paired_steps_names_bad_replicas_per_pass(values):
  with pytest.raises(ValueError, match="expected positive integers") as e:
    paired_steps.parse_per_pass(values)
  assert ",".join(values) in str(e.value)
  assert paired_steps.parse_per_pass(["1", "4"]) == [1, 4] and paired_steps.parse_per_pass([]) == []


@pytest.mark.parametrize("text,named", [
    ("{not json", "is not JSON"), ("[1]", "expected a non-empty JSON object"),
    ("{}", "expected a non-empty JSON object"), ('{"a": 3}', "expected a non-empty JSON object"),
    ('{"torch_eager": {}}', "other entries' names")])
def test_paired_steps_names_bad_variants(text, named):
  with pytest.raises(ValueError, match=named) as e:
    paired_steps.parse_variants(text)
  assert text in str(e.value) or "torch_eager" in str(e.value)


def test_paired_steps_reads_options_as_strings_and_defaults_to_the_cpu_variants():
  assert paired_steps.parse_variants("") is paired_steps.CPU_VARIANTS
  assert next(iter(paired_steps.CPU_VARIANTS)) == "xla_default"
  assert paired_steps.parse_variants('{"a": {"xla_cpu_enable_fast_math": true}}') == {
      "a": {"xla_cpu_enable_fast_math": "True"}}


@pytest.mark.slow
def test_pyro_epochs_trains_both_in_turns_and_reports_each_epoch():
  pytest.importorskip("pyro")
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "pyro_epochs.py"), "--json", "--epochs=2",
       "--max_batches=20", "--labels=3000", f"--data_dir={DATA_DIR}"],
      capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  assert [e["epoch"] for e in figures["epochs"]] == [1, 2]
  assert figures["matmul_precision"] == "default"
  for e in figures["epochs"]:
    assert e["pyro_s"] > 0 and e["ours_s"] > 0
    # 20 batches of each: both classifiers already beat chance on MNIST's test set.
    assert 0.1 < e["pyro_test_accuracy"] <= 1 and 0.1 < e["ours_test_accuracy"] <= 1
  assert "| 2 |" in proc.stdout


def test_pyro_epochs_refuses_a_missing_data_folder():
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "pyro_epochs.py"), "--data_dir="],
      capture_output=True, text=True, timeout=120, cwd=REPO,
      env={k: v for k, v in os.environ.items() if k != "UNTAPPED_DATA_DIR"})
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith("pyro_epochs: --data_dir")


@pytest.mark.slow
def test_paired_steps_bfloat16_entries_train_the_float32_maths_in_bfloat16():
  """--bfloat16's entries: the package's step under compute_dtype='bfloat16', without and
  with YNNPACK, and under matmul_precision='BF16_BF16_F32', from the float32 variants'
  state: near the float32 step's loss, not equal."""
  runners, compile_s = paired_steps.bfloat16_runners(model="m2", unlabeled_batch=8,
                                                     labeled_batch=-1, tiny=True)
  assert list(runners) == ["bfloat16", "bfloat16_ynnpack", "bfloat16_matmuls"]
  assert set(compile_s) == set(runners)
  reference, _ = paired_steps.jax_runners({"float32": {}}, model="m2", unlabeled_batch=8,
                                          labeled_batch=-1, tiny=True)
  float32 = reference["float32"](3)
  # bfloat16_runners took one step to compile; the same count of steps from here.
  losses = [runners[name](2) for name in runners]
  assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # YNNPACK: other kernels only
  assert losses[0] != float32 and losses[0] == pytest.approx(float32, rel=1e-3)
  # bfloat16 matmuls with float32 activations: another rounding, as near.
  assert losses[2] not in (float32, losses[0]) and losses[2] == pytest.approx(float32, rel=1e-3)
  # --population_matmul_precision: the population entries under the policy.
  populations, _ = paired_steps.population_runners(
      [1], model="m2", unlabeled_batch=8, labeled_batch=-1, tiny=True,
      matmul_precision="BF16_BF16_F32")
  assert populations["population_1"](2) == pytest.approx(losses[2], rel=1e-6)


def test_precision_names_an_unknown_policy_and_trains_nothing(tmp_path):
  proc = subprocess.run([sys.executable, "benchmarks/precision.py", "--workdir",
                         str(tmp_path / "runs"), "--policies=bfloat16,float16"],
                        capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "precision: --policies=bfloat16,float16; expected some of "
      "['bfloat16', 'bfloat16_matmuls'].")
  assert not (tmp_path / "runs").exists()


def test_dot_rates_times_every_form_of_the_three_products():
  proc = subprocess.run([sys.executable, "benchmarks/dot_rates.py", "--rows=8", "--inputs=6",
                         "--outputs=4", "--repeats=1"], capture_output=True, text=True,
                        timeout=600, cwd=REPO, check=True)
  lines = proc.stdout.strip().splitlines()
  rates = json.loads(lines[-1])
  assert len(rates) == 10 and all(r > 0 for r in rates.values())
  assert "weight gradient hᵀ g / float32 result, hᵀ physical" in rates
  assert sum(line.startswith(("| forward", "| input", "| weight")) for line in lines) == 3


@pytest.mark.slow
def test_population_processes_runs_one_population_against_its_seeds_one_by_one():
  # The smallest real comparison: a population of two against two runs, 2 steps each.
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "population_processes.py"), "--json",
       "--config=experiments/configs/m2_benchmark.py:labels=100,runlocal", "--seeds=2",
       "--steps=2", "--pairs=1", "--warmup_pairs=0", f"--set=data.dir={DATA_DIR}"],
      capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  figures = json.loads(proc.stdout.strip().splitlines()[-1])
  (pair,) = figures["pairs"]
  assert pair["population"]["processes"] == 1 and pair["separate"]["processes"] == 2
  for side in ("population", "separate"):
    # Each side ran whole training processes: JAX, MNIST and a compiled step, not a stub.
    assert pair[side]["peak_rss_mb"] > 200, side
    assert 0 < pair[side]["cpu_s"] and 0 < pair[side]["wall_s"], side
  for figure, ratio in figures["paired_ratio"].items():
    assert ratio == pytest.approx(pair["population"][figure] / pair["separate"][figure])
  assert "| one process, num_seeds=S |" in proc.stdout


@pytest.mark.parametrize("flags,named", [(["--seeds=1"], "--seeds=1"),
                                         (["--steps=0", "--pairs=0"], "--steps=0 --pairs=0"),
                                         (["--set=train.eval_every"], "train.eval_every")])
def test_population_processes_names_bad_flags_and_runs_nothing(flags, named):
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "population_processes.py"), *flags],
      capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode == 2 and "| one process" not in proc.stdout
  assert named in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_population_processes_names_a_run_that_fails(tmp_path):
  # A bad override reaches the first training process, which exits 2; the comparison stops
  # with one line naming it, and nothing of its workdirs is left.
  proc = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "population_processes.py"),
       "--config=experiments/configs/m2_benchmark.py:labels=100,runlocal", "--steps=1",
       "--pairs=1", "--warmup_pairs=0", "--set=model.latent_dim=-3"],
      capture_output=True, text=True, timeout=300, cwd=REPO,
      env=dict(os.environ, TMPDIR=str(tmp_path)))
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert "exited with 2" in last and "model.latent_dim=-3" in last
  assert list(tmp_path.iterdir()) == []
