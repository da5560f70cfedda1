"""Workdir and output paths as `etils.epath.Path` (orbax's own path type): a local folder or a
cloud URI (gs://bucket/run, s3://...; reading and writing it needs that scheme's file system,
TensorFlow's for gs://, otherwise fsspec's gcsfs/s3fs).

Object stores have no append, no advisory locks and no in-place partial writes, so code that
relies on them asks `is_local` and takes another route for a URI (`append_text` rewrites the
whole object; `inception.train.checkpoints.WorkdirLock` uses a lease file). What can only be
local (memory-mapped feature caches, the data cache's image trees and locks, `pip download`)
refuses a URI with `require_local`, naming what to change, instead of writing to a local folder
called 'gs:'.

A leaf: it imports nothing of the project, so that `data` may use it too (with
`inception.checks`, the one layer below both; tests/test_architecture.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator

from etils import epath

_URI = re.compile(r'^[A-Za-z][A-Za-z0-9+.-]*://')


def is_uri(path: str | os.PathLike) -> bool:
  """Whether `path` is a URI ('gs://...', 's3://...'), not a local path."""
  return bool(_URI.match(os.fspath(path)))


def is_local(path: str | os.PathLike) -> bool:
  return not is_uri(path)


def as_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath.Path; a local one with '~' expanded."""
  text = os.fspath(path)
  if is_uri(text):
    return epath.Path(text)
  return epath.Path(os.path.expanduser(text))


def absolute(path: str | os.PathLike) -> epath.Path:
  """`as_path(path)`, a local one made absolute (a URI already is)."""
  path = as_path(path)
  return path.absolute() if is_local(path) else path


def same(a: str | os.PathLike, b: str | os.PathLike) -> bool:
  """Whether `a` and `b` name the same folder or file (local ones after resolving links)."""
  if is_uri(a) or is_uri(b):
    return os.fspath(as_path(a)).rstrip('/') == os.fspath(as_path(b)).rstrip('/')
  return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def require_local(path: str | os.PathLike, what: str, why: str) -> None:
  """Raises ValueError naming `what` (e.g. 'the feature cache directory') when `path` is a URI.

  why: what needs the local file system, e.g. 'features are memory-mapped'.
  """
  if is_uri(path):
    raise ValueError(f'{what} {os.fspath(path)} is a URI, but it must be a local folder '
                     f'({why}); point it at a local disk (only the workdir may be a URI)')


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[io.BufferedIOBase]:
  """A binary file that becomes `path` only if the block succeeds.

  Locally: a temporary file next to `path`, fsynced, then `os.replace`d (mode 0644). For a URI:
  a temporary object next to it, then renamed (an object store's copy makes the final object
  appear whole); the temporary object is removed on failure.
  """
  path = as_path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_local(path):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.{_owner()}.',
                               suffix='.tmp')
    try:
      os.chmod(tmp, 0o644)  # mkstemp creates 0600; caches are meant to be shared like pip's.
      with os.fdopen(fd, 'wb') as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
    except BaseException:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
      raise
    return
  tmp = path.parent / f'.{path.name}.{uuid.uuid4().hex[:12]}.tmp'
  try:
    with tmp.open('wb') as f:
      yield f
    tmp.replace(path)
  except BaseException:
    with contextlib.suppress(Exception):
      if tmp.exists():
        tmp.unlink()
    raise


def _owner() -> str:
  """'<host>-<pid>' of this process, as its temporary files' names carry it."""
  return f'{re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())}-{os.getpid()}'


def remove_orphaned_temporaries(folder: str | os.PathLike,
                                log: Callable[[str], None] = print) -> int:
  """Deletes the `atomic_write` temporary files in local `folder` whose writer, a process of
  this host, is gone (killed mid-write; a feature cache's can be gigabytes). Files of live
  processes and of other hosts are left alone. Returns the bytes freed."""
  host = _owner().rsplit('-', 1)[0]
  freed, count = 0, 0
  pattern = re.compile(rf'^\..+\.{re.escape(host)}-(\d+)\.[^.]+\.tmp$')
  for entry in os.scandir(folder) if os.path.isdir(folder) else ():
    match = pattern.match(entry.name)
    if not match or _alive(int(match.group(1))):
      continue
    with contextlib.suppress(FileNotFoundError):
      size = entry.stat().st_size
      os.unlink(entry.path)
      freed, count = freed + size, count + 1
  if count:
    log(f'Removed {count} temporary file(s) ({freed / 2**20:.1f} MiB) that killed processes '
        f'left in {folder}.')
  return freed


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's live process.
    return True
  return True


def write_bytes(path: str | os.PathLike, blob: bytes) -> None:
  """Writes `blob` to `path` atomically (see `atomic_write`)."""
  with atomic_write(path) as f:
    f.write(blob)


def write_text(path: str | os.PathLike, text: str) -> None:
  write_bytes(path, text.encode())


def file_digest(path: str | os.PathLike, algorithm: str = 'sha256') -> str:
  """The hex digest (`hashlib` algorithm name: sha256, md5, ...) of the file at `path` (local or
  a URI), read 1 MiB at a time."""
  digest = hashlib.new(algorithm)
  with as_path(path).open('rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def append_text(path: str | os.PathLike, text: str) -> None:
  """Appends `text` to `path` (created if missing).

  Locally an append (O_APPEND: a killed writer can tear only the last line). For a URI the
  object is read and rewritten whole, since object stores cannot append; the writer must be the
  only one (a workdir's is: the workdir lock).
  """
  path = as_path(path)
  if is_local(path):
    with open(path, 'a') as f:
      f.write(text)
    return
  old = path.read_bytes() if path.exists() else b''
  write_bytes(path, old + text.encode())


def save_figure(fig, path: str | os.PathLike, **savefig_kwargs) -> None:
  """`fig.savefig` to `path` (PNG) through `write_bytes`, so a URI works too."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', **savefig_kwargs)
  write_bytes(path, buffer.getvalue())
