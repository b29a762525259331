"""Atomic file writes: a reader (or a parallel writer) never sees a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

import jax


def is_writer() -> bool:
  """Only process 0 of a multi-host run writes files (each process computes the same)."""
  return jax.process_index() == 0


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a fresh temporary path beside `path`; renames it onto `path` on success
  (on process 0 only: other processes' writes are dropped)."""
  directory, name = os.path.split(os.path.abspath(path))
  suffix = os.path.splitext(name)[1]  # savefig and np.savez go by the extension
  fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=directory)
  os.close(fd)
  try:
    yield tmp
    if is_writer():
      os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  with atomic_path(path) as tmp, open(tmp, "w") as f:
    f.write(text)


def write_json(path: str, payload: Any) -> None:
  write_text(path, json.dumps(payload, indent=2, sort_keys=True))
