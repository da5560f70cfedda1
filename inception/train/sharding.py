"""Data parallelism: a 1-D device mesh ('data'), replicated state, batches split over devices;
and the multi-process runtime (`jax.distributed`) the mesh spans.

Each process feeds its local slice of the global batch (B_global / process_count examples);
`shard_batch` assembles the global array with `jax.make_array_from_process_local_data`.
With several processes, `barrier`, `all_agree` and `to_host` are the few host-level
collectives the trainer and tools need (each a no-op or a plain copy with one process).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


# Seconds without heartbeats after which JAX's coordination service declares a process dead
# and ends every other process of the job (JAX's own default is 100).
HEARTBEAT_TIMEOUT_S = 60


def initialize_multihost(coordinator_address: str | None = None,
                         num_processes: int | None = None, process_id: int | None = None, *,
                         heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S) -> None:
  """`jax.distributed.initialize` with the given values; those left None are auto-detected
  (TPU pods, Slurm, Open MPI, env vars such as JAX_COORDINATOR_ADDRESS).

  Must run before anything starts JAX's backends. CPU devices of different processes talk
  through JAX's CPU collectives (`jax_cpu_collectives_implementation`, gloo by default), so a
  job of several local processes on one machine behaves like a cluster.
  When a process dies, the coordination service ends the others within about
  `heartbeat_timeout_s` (the coordinator's process, 0: within a few seconds), each with JAX's
  message "Terminating process because the JAX distributed service detected fatal errors".

  Raises:
    ValueError: the values are incomplete (no cluster to detect the rest from) or invalid.
  """
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)


def barrier(name: str) -> None:
  """Blocks until every process reached `barrier(name)` (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def all_agree(flag: bool) -> bool:
  """Whether `flag` is True in every process (each process passes its own)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))
  return bool(np.all(flags))


def on_main_agreed(fn: Callable[[], Any], catch: type[Exception] | tuple[type[Exception], ...],
                   refused: Exception) -> Any:
  """fn() in process 0 only (None elsewhere). When it raises one of `catch`, every process
  raises: process 0 its error, the others `refused`; so none starts collectives the others
  will never join."""
  value, error = None, None
  if jax.process_index() == 0:
    try:
      value = fn()
    except catch as e:
      error = e
  if not all_agree(error is None):
    raise error or refused
  return value


def to_host(x: jax.Array) -> np.ndarray:
  """A global array as one numpy array in every process (sharded ones gathered in order)."""
  if jax.process_count() > 1 and not x.is_fully_replicated:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def make_mesh(devices: Any = None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process) named 'data'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices).reshape(-1), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


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
  if jax.process_count() == 1:
    return jax.device_put(tree, replicated(mesh))
  # Several processes: device_put cannot target other processes' devices; each process gives
  # its (identical) copy for its own devices.
  sharding = replicated(mesh)

  def one(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return jax.tree.map(one, tree)


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
