"""Shared pieces of the benchmarks: environment report, A/B alternation, FLOPs, peak, Keras.

Every benchmark times its contenders alternately (A B A B ...) after warm-up and compilation and
reports medians: on a shared machine absolute times are noise, ratios measured side by side are
the figures.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping
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


def environment() -> str:
  """One block of text: CPUs, load, library versions (printed at the top of every bench)."""
  versions = []
  for dist in ('jax', 'jaxlib', 'flax', 'optax', 'tensorflow', 'tf_keras', 'numpy'):
    try:
      versions.append(f'{dist} {importlib.metadata.version(dist)}')
    except importlib.metadata.PackageNotFoundError:
      pass
  load = ', '.join(f'{x:.2f}' for x in os.getloadavg())
  return (f'# host: {platform.node()} {platform.machine()}, os.cpu_count()={os.cpu_count()}, '
          f'load average (1/5/15 min) {load}\n# python {platform.python_version()}; '
          f'{"; ".join(versions)}\n# XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')


def alternate(contenders: Mapping[str, Callable[[], Any]], repeats: int, calls: int = 1,
              warmup: int = 1) -> dict[str, list[float]]:
  """Times each contender `repeats` times, alternating A B A B ...

  Args:
    contenders: name -> function that runs one unit of work to completion (blocks on results).
    repeats: rounds; each round times every contender once.
    calls: calls per timing (one timing = their total).
    warmup: untimed calls of each contender first (compilation, caches).

  Returns:
    name -> seconds per call, one entry per round.
  """
  for fn in contenders.values():
    for _ in range(warmup):
      fn()
  times = {name: [] for name in contenders}
  for _ in range(repeats):
    for name, fn in contenders.items():
      start = time.perf_counter()
      for _ in range(calls):
        fn()
      times[name].append((time.perf_counter() - start) / calls)
  return times


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


def compiled_flops(compiled: Any) -> float:
  """FLOPs of one call of a compiled JAX computation, from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax returned one dict per device.
    cost = cost[0]
  return float(cost['flops'])


def matmul_peak(size: int = 2048, repeats: int = 10, dtype: Any = None) -> float:
  """This machine's measured float32 (or `dtype`) matmul rate in FLOP/s, best of repeats.

  The best, not the median: a peak, and on a shared machine the least disturbed run is the
  closest to it. On CPU the best of XLA's default (YNNPACK) and Eigen (`inception.xla_options`)
  matmuls.
  """
  import jax
  import jax.numpy as jnp
  from inception import xla_options
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


def random_images(n: int, size: int = IMAGE_SIZE, seed: int = 0) -> np.ndarray:
  """[n, size, size, 3] float32 in [0, 1] (already `rescale`d), and labels [n] in {0, 1}."""
  rng = np.random.default_rng(seed)
  return rng.uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Keras 2 reference and weight copy.


def keras_backbone(size: int = IMAGE_SIZE, cut: str = CUT, seed: int = 0):
  """tf_keras InceptionV3(weights=None) cut at `cut`, frozen, with random BatchNorm statistics.

  The random moving mean/variance/beta make the feature comparison with ours test the
  BatchNorm arithmetic too (Keras initialises them to 0/1/0).
  """
  quiet_tensorflow()
  import tf_keras as keras
  keras.utils.set_random_seed(seed)
  base = keras.applications.InceptionV3(include_top=False, weights=None,
                                        input_shape=(size, size, 3))
  backbone = keras.Model(base.inputs, base.get_layer(cut).output)
  rng = np.random.default_rng(seed)
  for layer in backbone.layers:
    layer.trainable = False
    if isinstance(layer, keras.layers.BatchNormalization):
      beta, mean, var = layer.get_weights()
      layer.set_weights([rng.normal(0, 0.3, beta.shape), rng.normal(0, 0.5, mean.shape),
                         rng.uniform(0.3, 3.0, var.shape)])
  return backbone


def keras_to_flax_variables(backbone) -> dict[str, Any]:
  """Copies a Keras InceptionV3's conv/BatchNorm weights into our param tree, by layer order.

  Keras creates the 94 conv units in `model.UNIT_PATHS` order; conv layer names carry a global
  counter (`conv2d`, `conv2d_1`, ...), so units are sorted by that number and each conv's
  BatchNorm is the layer its output feeds.
  """
  import tf_keras as keras
  from inception import model as model_lib

  def number(name: str) -> int:
    tail = name.rsplit('_', 1)[-1]
    return int(tail) if tail.isdigit() else 0

  convs = sorted((l for l in backbone.layers if isinstance(l, keras.layers.Conv2D)),
                 key=lambda l: number(l.name))
  params, stats = {}, {}
  for (block, unit), conv in zip(model_lib.UNIT_PATHS, convs):
    bn = conv.outbound_nodes[0].outbound_layer
    if not isinstance(bn, keras.layers.BatchNormalization):
      raise ValueError(f'Keras layer {conv.name} feeds {bn.name}, not a BatchNormalization')
    (kernel,) = conv.get_weights()
    beta, mean, var = bn.get_weights()
    params.setdefault(block, {})[unit] = {'conv': {'kernel': kernel}, 'bn': {'bias': beta}}
    stats.setdefault(block, {})[unit] = {'bn': {'mean': mean, 'var': var}}
  return {'params': params, 'batch_stats': stats}


def keras_head(features_shape: tuple[int, ...], seed: int = 0):
  """The seed notebook's head: Flatten -> Dense(1024, relu) -> Dropout(0.2) -> Dense(1, sigmoid)."""
  import tf_keras as keras
  keras.utils.set_random_seed(seed)
  inputs = keras.Input(features_shape)
  x = keras.layers.Flatten()(inputs)
  x = keras.layers.Dense(1024, activation='relu')(x)
  x = keras.layers.Dropout(0.2)(x)
  return keras.Model(inputs, keras.layers.Dense(1, activation='sigmoid')(x))


def keras_transfer_model(backbone, seed: int = 0):
  """Frozen backbone + head, compiled as the notebook: RMSprop(1e-3), binary cross-entropy."""
  import tf_keras as keras
  head = keras_head(tuple(backbone.output.shape[1:]), seed)
  model = keras.Model(backbone.inputs, head(backbone.output))
  model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
                loss='binary_crossentropy', metrics=['accuracy'])
  return model


def keras_augmentation(rescale: float | None = 1 / 255):
  """The seed notebook's ImageDataGenerator (for 0..255 inputs, as the notebook's)."""
  import tf_keras as keras
  return keras.preprocessing.image.ImageDataGenerator(
      rescale=rescale, rotation_range=40, width_shift_range=0.2, height_shift_range=0.2, shear_range=0.2,
      zoom_range=0.2, horizontal_flip=True, fill_mode='nearest')
