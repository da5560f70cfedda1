"""XLA compiler options for InceptionV3, chosen per host from its CPU's features.

jaxlib 0.10.2 runs every CPU convolution and dot as a YNNPACK fusion by default. For this
network's convolutions (small spatial grids, 1x7/7x1 kernels) XLA's Eigen convolutions are
faster on every x86 kind measured (docs/performance.md, "Machines, CPU kinds and the options
chosen for each"): the `eigen` candidate.
`choose()` reads the CPU kind (`cpu_kind`: architecture and vector extensions, never a CPU
name) and picks the candidate measured fastest on that kind (`CHOICE_BY_KIND`); a kind not
measured gets `DEFAULT` and says so. The options are per compilation, so nothing global
changes:

    step = jax.jit(step_fn, compiler_options=xla_options.compiler_options())

or, for a whole process (before JAX starts its backend): `xla_options.set_xla_flags()`.
On other platforms both are no-ops. The trainer logs `choose().describe()` and records
`choose().to_json()` in run.json.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import platform as platform_lib
import subprocess
from typing import Any

_YNN = 'xla_cpu_experimental_ynn_fusion_type'
_T = 'LIBRARY_FUSION_TYPE_'
# The XLA:CPU configurations measured against each other (bench/xla_flags_sweep.py,
# bench/conv_units.py): name -> compiler options. An empty YNNPACK list = no YNNPACK fusions:
# convolutions and dots go to XLA's Eigen runtime.
CANDIDATES: dict[str, dict[str, Any]] = {
    'xla_default': {},
    'eigen': {_YNN: ''},
    # oneDNN for dots (in this network the head's; XLA turns 1x1 convolutions into dots only
    # after its library-fusion pass) with their element-wise consumers. No convolution reaches
    # oneDNN in XLA:CPU.
    'eigen+onednn_dot': {_YNN: '', 'xla_cpu_use_onednn': True,
                         'xla_cpu_experimental_onednn_fusion_type': f'{_T}DOT,{_T}ELTWISE'},
    'eigen+ynn_dot': {_YNN: f'{_T}INDIVIDUAL_DOT'},
    'ynn_conv': {_YNN: f'{_T}INDIVIDUAL_CONVOLUTION'},
    'eigen+vector512': {_YNN: '', 'xla_cpu_prefer_vector_width': 512},
    'eigen+concurrent': {_YNN: '', 'xla_cpu_enable_concurrency_optimized_scheduler': True},
    # Each Eigen op on one thread; independent ops still run side by side.
    'eigen+single_thread': {_YNN: '', 'xla_cpu_multi_thread_eigen': False},
}

# CPU kind -> the candidate measured fastest there, the forward and the train step
# (docs/performance.md, "CPU kinds", with the commands).
CHOICE_BY_KIND = {
    'x86_64-avx2': 'eigen',    # AMD EPYC, AVX2, no AVX-512: eigen 1.85x xla_default.
    'x86_64-avx512': 'eigen',  # AMD EPYC Zen 4 (avx512_bf16, avx512_vnni): eigen 2.1x.
}
DEFAULT = 'eigen'  # Kinds not measured: the x86 choice (said in the log).


@dataclasses.dataclass(frozen=True)
class CpuFacts:
  """What `choose` reads: the CPU model (for the record only), architecture and flags."""
  model: str
  machine: str
  flags: frozenset[str]

  @property
  def avx512(self) -> tuple[str, ...]:
    return tuple(sorted(f for f in self.flags if f.startswith('avx512')))


@functools.cache
def cpu_facts() -> CpuFacts:
  """This host's CPU: /proc/cpuinfo, then `lscpu` for what it lacks (e.g. the model name on
  ARM). The file first: no subprocess in a training process whose threads are running."""
  fields = {'Model name': '', 'Flags': ''}
  try:
    info = pathlib.Path('/proc/cpuinfo').read_text()
  except OSError:
    info = ''
  names = {'model name': 'Model name', 'flags': 'Flags', 'Features': 'Flags'}
  for line in info.splitlines():
    key, _, value = line.partition(':')
    name = names.get(key.strip())
    if name and not fields[name]:
      fields[name] = value.strip()
  if not fields['Model name'] or not fields['Flags']:
    try:
      text = subprocess.run(['lscpu'], capture_output=True, text=True, check=False,
                            timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
      text = ''
    for line in text.splitlines():
      key, _, value = line.partition(':')
      if key.strip() in fields and not fields[key.strip()]:
        fields[key.strip()] = value.strip()
  return CpuFacts(model=fields['Model name'] or platform_lib.processor() or 'unknown',
                  machine=platform_lib.machine(), flags=frozenset(fields['Flags'].split()))


def cpu_kind(facts: CpuFacts) -> str:
  """'x86_64-avx512' (AVX-512 F), 'x86_64-avx2', 'x86_64' (neither), else the architecture."""
  if facts.machine in ('x86_64', 'AMD64'):
    if 'avx512f' in facts.flags:
      return 'x86_64-avx512'
    return 'x86_64-avx2' if 'avx2' in facts.flags else 'x86_64'
  return facts.machine or 'unknown'


@dataclasses.dataclass(frozen=True)
class Choice:
  """The options a host compiles with, and why."""
  platform: str
  name: str  # A CANDIDATES key ('none' off CPU).
  options: dict[str, Any]
  cpu_kind: str = ''
  cpu_model: str = ''
  measured: bool = True  # False: the kind has no measurement; DEFAULT was taken.

  def describe(self) -> str:
    if self.platform != 'cpu':
      return f'XLA options: {self.platform} defaults'
    how = ('measured fastest on this kind' if self.measured else
           f'this kind was not measured: the default {DEFAULT!r}; '
           'bench/xla_flags_sweep.py measures it')
    return (f'XLA:CPU options {self.name!r} {self.options} for CPU kind {self.cpu_kind} '
            f'({self.cpu_model}; {how}; docs/performance.md)')

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def choose(platform: str | None = None, facts: CpuFacts | None = None) -> Choice:
  """The options for `platform` ('cpu', 'gpu', 'tpu'; default `jax.default_backend()`) on a
  host with `facts` (default this host's)."""
  if platform is None:
    import jax
    platform = jax.default_backend()
  if platform != 'cpu':
    return Choice(platform=platform, name='none', options={})
  facts = facts or cpu_facts()
  kind = cpu_kind(facts)
  name = CHOICE_BY_KIND.get(kind, DEFAULT)
  return Choice(platform='cpu', name=name, options=dict(CANDIDATES[name]), cpu_kind=kind,
                cpu_model=facts.model, measured=kind in CHOICE_BY_KIND)


def compiler_options(platform: str | None = None) -> dict[str, Any]:
  """Options for `jax.jit(..., compiler_options=...)`: `choose(platform).options`."""
  return choose(platform).options


def as_flags(options: dict[str, Any]) -> str:
  """`options` as XLA_FLAGS text: '--name=value' each (booleans lower case)."""
  return ' '.join(f'--{k}={str(v).lower() if isinstance(v, bool) else v}'
                  for k, v in options.items())


def set_xla_flags(facts: CpuFacts | None = None) -> str:
  """Appends this CPU's chosen options to $XLA_FLAGS, each unless the variable sets it.

  Must run before JAX initialises its backends (XLA reads the variable once); XLA:CPU options
  are ignored by other backends. Returns the resulting XLA_FLAGS.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  chosen = choose('cpu', facts).options
  extra = as_flags({k: v for k, v in chosen.items() if k not in flags})
  flags = f'{flags} {extra}'.strip()
  os.environ['XLA_FLAGS'] = flags
  return flags
