"""Data parallelism: a 1-D device mesh ('data'), replicated state, batches split over devices.

Each process feeds its local slice of the global batch (B_global / process_count examples);
`shard_batch` assembles the global array with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def initialize_multihost() -> None:
  """`jax.distributed.initialize()` (cluster auto-detection: TPU pods, SLURM, env vars)."""
  jax.distributed.initialize()


def make_mesh(devices: Any = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process) named 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices).reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, key: str = 'train.batch_size') -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f'{key}={batch_size} is not divisible by the device count {n}; use a '
                     f'multiple of {n}.')


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Process-local numpy batch -> global jax arrays split over 'data' (non-array leaves dropped)."""
  sharding = data_sharded(mesh)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    if v.dtype.kind in 'OUS':  # file paths and the like stay on the host
      continue
    out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host/device pytree replicated on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def prefetch_to_device(batches: Iterable[dict], mesh: Mesh, size: int = 2) -> Iterator[dict]:
  """Yields sharded device batches, keeping `size` transfers in flight ahead of the consumer."""
  queue: collections.deque = collections.deque()
  it = iter(batches)
  for b in itertools.islice(it, size):
    queue.append(shard_batch(b, mesh))
  while queue:
    yield queue.popleft()
    for b in itertools.islice(it, 1):
      queue.append(shard_batch(b, mesh))
