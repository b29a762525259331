"""Bad configs fail at start-up, before any data is read, naming the key and value."""

import json

import pytest

from untapped_jax import run_dir
from untapped_jax import sweep
from untapped_jax import train
from untapped_jax.data import mnist
from untapped_jax.configs import default


def config_with(**overrides):
  c = default.get_config()
  c.data.source = "folder"
  c.data.dir = "/nonexistent/mnist"  # validation must fail before this is read
  return sweep.apply_point(c, {f"config.{k}": v for k, v in overrides.items()})


BAD = [
    ({"data.labeled_batch_size": 0}, r"data.labeled_batch_size=0; expected a positive"),
    ({"data.unlabeled_batch_size": -5}, r"data.unlabeled_batch_size=-5"),
    ({"data.label_only_batch_size": 0}, r"data.label_only_batch_size=0"),
    ({"train.num_steps": 0}, r"train.num_steps=0"),
    ({"num_seeds": 0}, r"num_seeds=0"),
    ({"data.labeled_classes": ()}, r"data.labeled_classes=\(\): expected distinct digits"),
    ({"data.unlabeled_classes": (3, 12)}, r"data.unlabeled_classes=\(3, 12\)"),
    ({"data.labeled_per_class": 0}, r"data.labeled_per_class=0"),
    ({"data.max_unlabeled": 0}, r"data.max_unlabeled=0 would leave that stream empty"),
    ({"data.num_validation": 60000}, r"data.num_validation=60000"),
    ({"data.binarization": "gray"}, r"data.binarization='gray'; expected one of"),
    ({"model.activation": "swish"}, r"model.activation='swish'"),
    ({"model.hidden": ()}, r"model.hidden=\(\)"),
    ({"model.matmul_precision": "fp32"}, r"model.matmul_precision='fp32'; expected 'default'"),
    ({"train.replicas_per_pass": -1}, r"train.replicas_per_pass=-1; expected 0"),
    ({"train.select_by": "best"}, r"train.select_by='best'"),
    ({"train.learning_rate": 0.0}, r"train.learning_rate=0.0; expected > 0"),
    ({"train.checkpoint_every": 150}, r"train.checkpoint_every=150; expected 0 .* a multiple "
     r"of train.log_every=100"),
    ({"train.checkpoint_every": -100}, r"train.checkpoint_every=-100"),
    ({"train.clip_value": -1.0}, r"train.clip_value=-1.0"),
    ({"train.lr_schedule": "step"}, r"train.lr_schedule='step'; expected one of"),
    ({"train.lr_schedule": "cosine", "train.lr_final_fraction": -0.1},
     r"train.lr_final_fraction=-0.1; expected in \[0, 1\]"),
    ({"model_name": "m3"}, r"model_name='m3'; expected one of"),
    ({"objective.stream_weighting": "equal"}, r"objective.stream_weighting='equal'"),
    ({"model_name": "untapped", "objective.label_only": "wake"}, r"objective.label_only='wake'"),
    ({"model_name": "untapped", "objective.label_smoothing": 1.5},
     r"objective.label_smoothing=1.5"),
    ({"model_name": "untapped", "objective.label_only": "sleep",
      "objective.sleep_terms": ("log_p_x", "log_q_y")}, r"objective.sleep_terms=.*'log_q_y'"),
    ({"model_name": "untapped", "objective.x_estimator": "reinforce"},
     r"objective.x_estimator='reinforce'"),
    ({"model_name": "untapped", "objective.image_prior": "gan"}, r"objective.image_prior='gan'"),
    ({"model_name": "untapped", "objective.label_only_z": "mean"},
     r"objective.label_only_z='mean'"),
]


@pytest.mark.parametrize("overrides,match", BAD)
def test_bad_config_is_a_clear_error_before_data_and_files(tmp_path, overrides, match):
  workdir = tmp_path / "run"
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config_with(**overrides), str(workdir))
  assert not workdir.exists()


def test_unwritable_workdir_is_named(tmp_path):
  (tmp_path / "a_file").write_text("")
  # A data folder that passes the start-up check (the four IDX names exist), so the
  # workdir is the first thing found wrong.
  (tmp_path / "mnist").mkdir()
  for _, base, _, _ in mnist.FILES:
    (tmp_path / "mnist" / base).write_bytes(b"")
  with pytest.raises(ValueError, match=r"workdir .*a_file/run.* is not writable"):
    train.train_and_evaluate(config_with(**{"data.dir": str(tmp_path / "mnist")}),
                             str(tmp_path / "a_file" / "run"))


def test_valid_config_gets_as_far_as_the_data(tmp_path):
  # The default config passes validation; the next failure is the missing data folder.
  with pytest.raises(ValueError, match="/nonexistent/mnist"):
    train.train_and_evaluate(config_with(), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # checked before the workdir is made


def test_a_longer_rerun_under_a_cosine_schedule_is_another_experiment(tmp_path):
  # The length sets a decaying schedule's shape, so unlike under a constant rate it may
  # not change in the same workdir; under a constant rate it still may.
  for schedule, refused in (("cosine", True), ("constant", False)):
    workdir = tmp_path / schedule
    workdir.mkdir()
    first = config_with(**{"train.lr_schedule": schedule, "train.num_steps": 4000})
    (workdir / "config.json").write_text(json.dumps(first.to_dict()))
    longer = config_with(**{"train.lr_schedule": schedule, "train.num_steps": 12000})
    if refused:
      with pytest.raises(ValueError, match=r"another config: \['train.num_steps'\]"):
        run_dir.check_same_experiment(longer, str(workdir))
    else:
      run_dir.check_same_experiment(longer, str(workdir))


def test_a_run_from_before_a_key_existed_is_the_same_experiment(tmp_path):
  # config.json written before train.weight_decay existed: resuming it, or a sweep reading
  # it as finished, must see the same experiment while the new key is at its default, and
  # another experiment once it is not.
  config = config_with()
  saved = config.to_dict()
  del saved["train"]["weight_decay"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  (tmp_path / "results.json").write_text("{}")
  run_dir.check_same_experiment(config, str(tmp_path))
  assert run_dir.is_finished(config, str(tmp_path))
  decayed = config_with(**{"train.weight_decay": 1e-4})
  with pytest.raises(ValueError, match=r"another config: \['train.weight_decay'\]"):
    run_dir.check_same_experiment(decayed, str(tmp_path))
  assert not run_dir.is_finished(decayed, str(tmp_path))
