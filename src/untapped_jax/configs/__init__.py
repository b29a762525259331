"""Config helpers shared by the experiment configs."""

from __future__ import annotations

import ml_collections


def shrink_for_runlocal(c):
  """Shrinks config `c` in place to a seconds-long run for smoke checks and tests."""
  c.data.max_unlabeled = 2000
  c.data.num_validation = 1000
  c.train.num_steps = 20
  c.train.log_every = 10
  c.train.eval_every = 20
  c.train.checkpoint_every = 0
  c.train.progress_bar = False
  c.eval.samples_per_class = 20
  c.eval.label_only_num_samples = 500
  return c


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses a big_vision-style config argument 'k1=v1,k2,...' over `defaults`.

  Each value is typed by its default (bool, int, float or str), so a config never
  re-checks types: 'labels=1e2' for an int default is an error naming the key. A
  bare key sets a boolean True. An unknown key is an error naming the accepted ones.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r} in {arg!r}; expected keys {sorted(defaults)}.")
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value (default {default!r}).")
      out[key] = True
    else:
      out[key] = _typed(key, value, default)
  return ml_collections.ConfigDict(out)


def _typed(key: str, value: str, default):
  kind = type(default).__name__
  try:
    if isinstance(default, bool):
      if value.lower() not in _TRUE + _FALSE:
        raise ValueError
      return value.lower() in _TRUE
    if isinstance(default, (int, float, str)):
      return type(default)(value)
  except ValueError:
    pass
  else:
    raise TypeError(f"config argument {key!r} has a default of type {kind}; "
                    "expected bool, int, float or str defaults.")
  article = "an" if kind == "int" else "a"
  raise ValueError(f"config argument {key}={value}: expected {article} {kind} like the default "
                   f"{default!r}.")


def flatten(config_dict: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}: a config's dict as dotted keys."""
  out = {}
  for k, v in config_dict.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
