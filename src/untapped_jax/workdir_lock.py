"""One live launch per folder: an OS lock on FOLDER/.lock for as long as the launch runs.

`fcntl.flock` is released by the kernel when its holder exits, killed or not, so a lock
left by a killed run never blocks the rerun and there is no stale-lock cleanup to get
wrong. The file's text names the holder (host, pid, since when) for the message of a
second launch that finds the folder taken. flock works on local disks and NFSv4; on
Lustre it needs the `flock` mount option (clusters that lack it fail at the first
lock with an OSError naming the folder, not silently).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Iterator

LOCK_FILE = ".lock"


class FolderInUse(RuntimeError):
  """Another live process holds the folder's lock; str() names it in one line."""

  def __init__(self, folder: str, holder: dict):
    self.folder, self.holder = folder, holder
    who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since "
           f"{holder.get('since', '?')}")
    super().__init__(f"workdir {folder!r} is in use by a live run ({who}); wait for it to "
                     "end or use another workdir.")


def _holder(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  try:
    return json.loads(os.read(fd, 4096).decode() or "{}")
  except ValueError:  # the holder is between truncate and write
    return {}


@contextlib.contextmanager
def hold(folder: str, *, wait: bool = False) -> Iterator[None]:
  """Holds `folder`'s lock (creating the folder) for the body of the `with`.

  Raises FolderInUse at once if another process holds it, or, with `wait`, blocks
  until that process lets go (for a cache that the first process fills and the rest
  then read).
  """
  os.makedirs(folder, exist_ok=True)
  fd = os.open(os.path.join(folder, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise FolderInUse(folder, _holder(fd)) from None
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({
        "host": socket.gethostname(), "pid": os.getpid(),
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }).encode())
    yield
  finally:
    os.close(fd)  # closing the descriptor is what releases the lock


@contextlib.contextmanager
def hold_available(folders: list[str]) -> Iterator[list[str]]:
  """Holds every folder of `folders` that no other live process holds; yields those
  (in order) and releases them at the end. Never blocks, so two launches that want
  overlapping folders cannot deadlock: each trains what it got."""
  with contextlib.ExitStack() as stack:
    held = []
    for folder in folders:
      try:
        stack.enter_context(hold(folder))
      except FolderInUse:
        continue
      held.append(folder)
    yield held
