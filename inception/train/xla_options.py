"""XLA compiler options that make InceptionV3 fast on CPU (measured in bench/xla_options.py).

jaxlib 0.10.2 runs every CPU convolution and dot as a YNNPACK fusion by default. For this
network's convolutions (small spatial grids, 1x7/7x1 kernels) XLA's Eigen convolutions are
faster on the x86 hosts measured (docs/performance.md, bench/README.md). The option is per compilation, so nothing global changes:

    step = jax.jit(step_fn, compiler_options=xla_options.compiler_options())

or, for a whole process (before JAX starts its backend): `xla_options.set_xla_flags()`.
On other platforms both are no-ops.
"""

from __future__ import annotations

import os

# Empty list = no YNNPACK fusions: convolutions and dots go to XLA's Eigen runtime.
CPU_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}
CPU_FLAGS = '--xla_cpu_experimental_ynn_fusion_type='


def compiler_options(platform: str | None = None) -> dict[str, str]:
  """Options for `jax.jit(..., compiler_options=...)`: CPU_OPTIONS on CPU, {} elsewhere.

  Args:
    platform: 'cpu', 'gpu', 'tpu'; default: `jax.default_backend()`.
  """
  if platform is None:
    import jax
    platform = jax.default_backend()
  return dict(CPU_OPTIONS) if platform == 'cpu' else {}


def set_xla_flags() -> str:
  """Appends CPU_FLAGS to $XLA_FLAGS unless the variable already sets the option.

  Must run before JAX initialises its backends (XLA reads the variable once); XLA:CPU options
  are ignored by other backends. Returns the resulting XLA_FLAGS.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_cpu_experimental_ynn_fusion_type' not in flags:
    flags = f'{flags} {CPU_FLAGS}'.strip()
    os.environ['XLA_FLAGS'] = flags
  return flags
