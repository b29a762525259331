"""MetricWriter: metrics.jsonl without duplicates across a resume; TensorBoard events."""

import glob
import json
import os
import struct
import subprocess
import sys

import numpy as np
from tensorboardX.proto import event_pb2

from untapped_jax import metric_writer


def read_events(logdir) -> list:
  """Every Event of the TFRecord files under logdir (length, crc, payload, crc)."""
  events = []
  for path in sorted(glob.glob(f"{logdir}/events.out.tfevents.*")):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return events


def scalars(events) -> dict:
  return {(v.tag, e.step): v.simple_value for e in events for v in e.summary.value
          if v.HasField("simple_value")}


def steps_in(path):
  return [json.loads(line)["step"] for line in open(path)]


def test_resume_drops_lines_past_the_checkpoint_and_logs_each_step_once(tmp_path):
  w = metric_writer.MetricWriter(str(tmp_path), config={"a": 1})
  for step in (10, 20, 30):
    w.write_scalars(step, {"train/loss": float(step), "note": "x"}, wall_s=step / 10)
  w.close()
  first_lines = (tmp_path / "metrics.jsonl").read_text().splitlines(keepends=True)
  # Killed after step 30, resumed from the checkpoint at step 20.
  w = metric_writer.MetricWriter(str(tmp_path), config={"a": 1}, resume_step=20)
  assert (tmp_path / "metrics.jsonl").read_text() == "".join(first_lines[:2])  # bytes kept
  assert steps_in(tmp_path / "timings.jsonl") == [10, 20]
  assert w.wall_s_before == 2.0
  w.write_scalars(30, {"train/loss": 31.0}, wall_s=0.5)
  w.close()
  lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [l["step"] for l in lines] == [10, 20, 30]
  assert lines[-1] == {"step": 30, "train/loss": 31.0}  # no clock time in the metrics
  timings = [json.loads(line) for line in open(tmp_path / "timings.jsonl")]
  assert timings == [{"step": 10, "wall_s": 1.0}, {"step": 20, "wall_s": 2.0},
                     {"step": 30, "wall_s": 2.5}]  # seconds add up over the attempts
  assert json.loads((tmp_path / "config.json").read_text()) == {"a": 1}
  events = scalars(read_events(tmp_path / "tensorboard"))
  assert events[("train/loss", 10)] == 10.0 and events[("train/loss", 30)] in (30.0, 31.0)
  assert not any(tag == "note" for tag, _ in events)  # strings are not scalars


def test_images_reach_tensorboard(tmp_path):
  w = metric_writer.MetricWriter(str(tmp_path), config={})
  w.write_image(5, "samples", np.linspace(0, 1, 28 * 56).reshape(28, 56))
  w.close()
  images = [(v.tag, e.step, v.image.width, v.image.height)
            for e in read_events(tmp_path / "tensorboard") for v in e.summary.value
            if v.HasField("image")]
  assert images == [("samples", 5, 56, 28)]


def test_without_tensorboard_only_jsonl(tmp_path):
  w = metric_writer.MetricWriter(str(tmp_path), config={}, tensorboard=False)
  w.write_scalars(1, {"x": 1.0}, wall_s=0.1)
  w.close()
  assert not (tmp_path / "tensorboard").exists()
  assert steps_in(tmp_path / "metrics.jsonl") == [1]


def test_tile_samples_puts_dimension_k_on_row_k():
  x = np.arange(3 * 2 * 16, dtype=float).reshape(3, 2, 16)
  grid = metric_writer.tile_samples(x, side=4)
  assert grid.shape == (12, 8)
  for k in range(3):
    for m in range(2):
      np.testing.assert_array_equal(grid[4 * k:4 * k + 4, 4 * m:4 * m + 4],
                                    x[k, m].reshape(4, 4))


def test_tile_samples_with_a_gap_leaves_nan_between_images():
  x = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
  grid = metric_writer.tile_samples(x, side=2, gap=1)
  assert grid.shape == (6, 9)
  for k in range(2):
    for m in range(3):
      np.testing.assert_array_equal(grid[3 * k:3 * k + 2, 3 * m:3 * m + 2], x[k, m].reshape(2, 2))
      assert np.isnan(grid[3 * k + 2, 3 * m:3 * m + 3]).all()
      assert np.isnan(grid[3 * k:3 * k + 3, 3 * m + 2]).all()
  assert np.isnan(grid).sum() == 6 * 9 - 2 * 3 * 4


def test_tensorboard_writer_does_not_import_torch(tmp_path):
  # A stand-in torch package first on the path records any import of it: tensorboardX
  # imports torch when it can, which cost every run 2 s where torch is installed.
  fake = tmp_path / "site" / "torch"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text(
      f"open({str(tmp_path / 'imported')!r}, 'w').close()\nTensor = object\n")
  code = ("from untapped_jax import metric_writer\n"
          f"w = metric_writer.MetricWriter({str(tmp_path / 'run')!r}, config={{}})\n"
          "w.write_scalars(1, {'train/loss': 1.0}, wall_s=0.1)\nw.close()\n"
          "import sys; assert 'torch' not in sys.modules\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert not (tmp_path / "imported").exists()
  assert scalars(read_events(tmp_path / "run" / "tensorboard")) == {("train/loss", 1): 1.0}


def test_read_results_adds_the_training_time_kept_outside_results_json(tmp_path):
  (tmp_path / "results.json").write_text(json.dumps({"test_accuracy": 0.5}))
  assert metric_writer.read_results(str(tmp_path)) == {"test_accuracy": 0.5}
  (tmp_path / "timing.json").write_text(json.dumps({"train_wall_s": 12.5, "num_steps": 3}))
  assert metric_writer.read_results(str(tmp_path)) == {"test_accuracy": 0.5,
                                                       "train_wall_s": 12.5}
