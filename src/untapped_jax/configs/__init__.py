"""Config helpers shared by the experiment configs."""

from __future__ import annotations

import ast


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


def parse_arg(arg: str | None, **defaults):
  """Parses a big_vision-style config argument 'k1=v1,k2,...' over `defaults`.

  A bare key sets a boolean True; values are Python literals where they parse,
  else strings. An unknown key is an error naming the accepted ones.
  """
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"config argument {key!r} in {arg!r}; expected keys {sorted(defaults)}.")
    if not _:
      out[key] = True
      continue
    try:
      out[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      out[key] = value
  return out
