"""The benchmarks' one harness: environment and CPU report, A/B alternation, medians and
spreads, FLOPs, matmul peak, the seed recipe's set-up.

Every benchmark times its contenders alternately (A B A B ...) after warm-up and compilation and
reports medians: on a shared machine absolute times are noise, ratios measured side by side are
the figures. Importing this module puts the repo root on sys.path (the scripts run as
`python bench/<name>.py`), for `inception`, `data`, `configs` and the Keras references the
benchmarks compare against, `tests.reference` (`keras_models`, `keras3_models`,
`keras_recipe`); nothing here builds a Keras model.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # Scripts run as `python bench/x.py` from anywhere.
  sys.path.insert(0, str(REPO_ROOT))

IMAGE_SIZE = 150
BATCH_SIZE = 20
CUT = 'mixed7'


def quiet_tensorflow() -> None:
  """Silences TF's C++ start-up logging (set before TF is imported)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


VERSIONED = ('jax', 'jaxlib', 'flax', 'optax', 'tensorflow', 'tf_keras', 'numpy')


def versions(dists: tuple[str, ...] = VERSIONED) -> dict[str, str]:
  """{distribution: version} of those of `dists` that are installed."""
  found = {}
  for dist in dists:
    try:
      found[dist] = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def cpu_facts() -> dict[str, Any]:
  """CPU model, count, kind (`xla_options.cpu_kind`, what the project's XLA options are chosen
  by) and its AVX2 / AVX-512 flags."""
  from inception.train import xla_options
  facts = xla_options.cpu_facts()
  return {'cpu_model': facts.model, 'cpu_count': os.cpu_count(),
          'cpu_kind': xla_options.cpu_kind(facts), 'avx512': list(facts.avx512),
          'avx2': 'avx2' in facts.flags}


def environment_facts() -> dict[str, Any]:
  """Host, CPU model and count, load average, platform, library versions and XLA_FLAGS,
  JSON-able."""
  return {
      'host': platform.node(), 'machine': platform.machine(), 'platform': platform.platform(),
      'python': platform.python_version(), **cpu_facts(),
      'load_average': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
      **versions(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }


def environment() -> str:
  """One block of text: CPUs, load, library versions (printed at the top of every bench)."""
  facts = environment_facts()
  load = ', '.join(f'{x:.2f}' for x in facts['load_average'] or ())
  versions_text = '; '.join(f'{dist} {facts[dist]}' for dist in VERSIONED if dist in facts)
  return (f'# host: {facts["host"]} {facts["machine"]}, os.cpu_count()={facts["cpu_count"]}, '
          f'load average (1/5/15 min) {load}\n# CPU: {facts["cpu_model"]}, kind '
          f'{facts["cpu_kind"]}, AVX-512: {" ".join(facts["avx512"]) or "none"}\n'
          f'# python {facts["python"]}; '
          f'{versions_text}\n# XLA_FLAGS={facts["xla_flags"]!r}')


def timed(fn: Callable[[], Any], calls: int = 1, lead_in: bool = False) -> Callable[[], float]:
  """`fn` as a contender that times itself: runs `calls` calls, returns seconds per call.

  lead_in: one untimed call first, so that the timing starts after the previous contender's
  worker threads have gone idle: TensorFlow's and XLA's thread pools spin after their work and
  take the CPU from whichever short call follows (measured: an XLA conv of 2-10 ms timed right
  after TensorFlow's ran 3-10% slower without it, bench/conv_units.py)."""
  def run() -> float:
    if lead_in:
      fn()
    start = time.perf_counter()
    for _ in range(calls):
      fn()
    return (time.perf_counter() - start) / calls
  return run


def rounds(contenders: Mapping[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
  """`repeats` rounds, each contender once per round in order (A B A B ...).

  Every contender returns its own seconds per call (`timed`, or a worker process that times
  inside itself, so that a pipe's round trip is not counted). Returns name -> seconds per
  call, one entry per round.
  """
  times = {name: [] for name in contenders}
  for _ in range(repeats):
    for name, fn in contenders.items():
      times[name].append(fn())
  return times


def alternate(contenders: Mapping[str, Callable[[], Any]], repeats: int, calls: int = 1,
              warmup: int = 1, lead_in: bool = False) -> dict[str, list[float]]:
  """Times each contender `repeats` times, alternating A B A B ... (`rounds` of `timed`).

  Args:
    contenders: name -> function that runs one unit of work to completion (blocks on results).
    repeats: rounds; each round times every contender once.
    calls: calls per timing (one timing = their total).
    warmup: untimed calls of each contender first (compilation, caches).
    lead_in: one untimed call before each timing (`timed`).

  Returns:
    name -> seconds per call, one entry per round.
  """
  for fn in contenders.values():
    for _ in range(warmup):
      fn()
  return rounds({name: timed(fn, calls, lead_in) for name, fn in contenders.items()}, repeats)


def median(xs: list[float]) -> float:
  return statistics.median(xs)


def report_rates(times: Mapping[str, list[float]], items_per_call: int, baseline: str,
                 unit: str = 'images/s') -> dict[str, float]:
  """Prints median rate per contender and the ratio to `baseline`; returns name -> rate."""
  rates = {name: items_per_call / median(ts) for name, ts in times.items()}
  spread = {name: (items_per_call / max(ts), items_per_call / min(ts)) for name, ts in times.items()}
  for name, rate in rates.items():
    lo, hi = spread[name]
    print(f'  {name:<34s} {rate:8.2f} {unit} (range {lo:.2f}-{hi:.2f}, n={len(times[name])})  '
          f'ratio vs {baseline}: {rate / rates[baseline]:.2f}x', flush=True)
  return rates


def spread(xs: Sequence[float], digits: int = 2) -> str:
  """'min..median..max' of `xs`."""
  return '..'.join(f'{x:.{digits}f}' for x in (min(xs), statistics.median(xs), max(xs)))


def report_ratios(times: Mapping[str, list[float]],
                  pairs: Sequence[tuple[str, str]]) -> dict[str, list[float]]:
  """Per (a, b) of `pairs`: a's speed over b's, round by round (b's seconds / a's, the rounds
  of `alternate` or `rounds`), printed as `spread`; returns 'a / b' -> the ratios."""
  ratios = {}
  for a, b in pairs:
    r = [tb / ta for ta, tb in zip(times[a], times[b])]
    ratios[f'{a} / {b}'] = r
    print(f'  per-round speed ratio {a} / {b}: {spread(r)} (n={len(r)})', flush=True)
  return ratios


def compiled_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled JAX computation, from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax returned one dict per device.
    cost = cost[0]
  return float(cost['flops'])


def matmul_peak(size: int = 2048, repeats: int = 10, dtype: Any = None) -> float:
  """This machine's measured float32 (or `dtype`) matmul rate in FLOP/s, best of repeats.

  The best, not the median: a peak, and on a shared machine the least disturbed run is the
  closest to it. On CPU the best of XLA's default (YNNPACK) and Eigen (`inception.train.xla_options`)
  matmuls.
  """
  import jax
  import jax.numpy as jnp
  from inception.train import xla_options
  dtype = dtype or jnp.float32
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  b = jax.random.normal(jax.random.key(1), (size, size), dtype)
  lowered = jax.jit(lambda a, b: a @ b).lower(a, b)
  options = [{}] + ([xla_options.compiler_options()] if xla_options.compiler_options() else [])
  times = []
  for f in [lowered.compile(compiler_options=o) for o in options]:
    f(a, b).block_until_ready()
    for _ in range(repeats):
      start = time.perf_counter()
      f(a, b).block_until_ready()
      times.append(time.perf_counter() - start)
  return 2 * size**3 / min(times)


def matmul_peaks(size: int = 2048, repeats: int = 10) -> dict[str, float]:
  """float32 matmul rate (FLOP/s, best of repeats) of each library on this machine: XLA with
  each of its CPU matmul back ends (its default, YNNPACK; Eigen; oneDNN), NumPy's BLAS and
  TensorFlow's MatMul (when TF is installed). The best of them is the host's measured limit."""
  import jax
  from inception.train import xla_options
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))

  def best(fn: Callable[[], Any]) -> float:
    fn()
    return 2 * size**3 / min(timed(fn)() for _ in range(repeats))
  peaks = {}
  ja, jb = jax.device_put(a), jax.device_put(b)
  lowered = jax.jit(lambda a, b: a @ b).lower(ja, jb)
  for name in ('xla_default', 'eigen', 'eigen+onednn_dot'):
    compiled = lowered.compile(compiler_options=xla_options.CANDIDATES[name])
    peaks[f'jax ({name})'] = best(lambda c=compiled: c(ja, jb).block_until_ready())
  peaks['numpy'] = best(lambda: a @ b)
  try:
    import tensorflow as tf
  except ImportError:
    return peaks
  ta, tb = tf.constant(a), tf.constant(b)
  matmul = tf.function(tf.matmul)
  peaks['tensorflow'] = best(lambda: matmul(ta, tb).numpy())
  return peaks


def default_data_path() -> str:
  """The real photos: $ANIMALS10_DIR, else ../shared/data/animals10-standin next to the repo,
  else '' (none: the callers search, or use the synthetic data set)."""
  if os.environ.get('ANIMALS10_DIR'):
    return os.environ['ANIMALS10_DIR']
  shared = REPO_ROOT.parent / 'shared' / 'data' / 'animals10-standin'
  return str(shared) if shared.exists() else ''


def random_images(n: int, size: int = IMAGE_SIZE, seed: int = 0) -> np.ndarray:
  """[n, size, size, 3] float32 in [0, 1] (already `rescale`d), and labels [n] in {0, 1}."""
  rng = np.random.default_rng(seed)
  return rng.uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32)


def seed_train_setup(variables_backbone: dict) -> tuple[Any, Any, Callable, Any]:
  """(config, model, jitted train step, state): the project's seed recipe (configs/dog_horse)
  on the given backbone variables, IMAGE_SIZE inputs; compiled with XLA's defaults (callers
  lower it and compile with other options as they compare)."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import dog_horse  # pylint: disable=g-import-not-at-top
  from inception import transfer  # pylint: disable=g-import-not-at-top
  from inception.train import optim  # pylint: disable=g-import-not-at-top
  from inception.train import param_rules  # pylint: disable=g-import-not-at-top
  from inception.train import steps  # pylint: disable=g-import-not-at-top
  config = dog_horse.get_config()
  model = transfer.from_config(config, num_classes=2)
  variables = transfer.init_variables(model, IMAGE_SIZE, seed=0)
  variables = transfer.replace_backbone(variables, variables_backbone)
  tx = optim.make(config.optimizer, variables['params'])
  mask = param_rules.trainable_mask(variables['params'], config.optimizer.param_rules)
  step = steps.make_train_step(model, tx, mask, donate=True, compiler_options={})
  state = steps.create_state(jax.device_put(variables), tx)
  return config, model, step, state
