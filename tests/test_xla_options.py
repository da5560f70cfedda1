"""XLA options chosen per host from its CPU's features (inception/train/xla_options.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from inception.train import xla_options


def _facts(machine='x86_64', *flags):
  return xla_options.CpuFacts(model='Some CPU', machine=machine, flags=frozenset(flags))


@pytest.mark.parametrize('facts, kind', [
    (_facts('x86_64', 'avx', 'avx2', 'avx512f', 'avx512_bf16'), 'x86_64-avx512'),
    (_facts('x86_64', 'avx', 'avx2', 'fma'), 'x86_64-avx2'),
    (_facts('x86_64', 'sse4_2'), 'x86_64'),
    (_facts('aarch64', 'asimd'), 'aarch64'),
])
def test_cpu_kind_is_read_from_architecture_and_flags(facts, kind):
  assert xla_options.cpu_kind(facts) == kind


def test_each_measured_kind_gets_its_candidate_and_says_so():
  choice = xla_options.choose('cpu', _facts('x86_64', 'avx2', 'avx512f'))
  assert choice.name == xla_options.CHOICE_BY_KIND['x86_64-avx512'] and choice.measured
  assert choice.options == xla_options.CANDIDATES[choice.name]
  assert 'x86_64-avx512' in choice.describe() and 'measured fastest' in choice.describe()
  assert choice.to_json() == {'platform': 'cpu', 'name': choice.name,
                              'options': choice.options, 'cpu_kind': 'x86_64-avx512',
                              'cpu_model': 'Some CPU', 'measured': True}


def test_an_unmeasured_kind_takes_the_default_loudly():
  choice = xla_options.choose('cpu', _facts('aarch64', 'asimd'))
  assert choice.name == xla_options.DEFAULT and not choice.measured
  assert 'not measured' in choice.describe() and 'aarch64' in choice.describe()


def test_other_platforms_get_no_options():
  for platform in ('gpu', 'tpu'):
    choice = xla_options.choose(platform)
    assert choice.options == {} and xla_options.compiler_options(platform) == {}
    assert choice.describe() == f'XLA options: {platform} defaults'


def test_this_host_is_read():
  facts = xla_options.cpu_facts()
  assert facts.machine and facts.model
  assert xla_options.compiler_options('cpu') == xla_options.choose('cpu', facts).options


def test_as_flags_and_set_xla_flags_keep_what_the_user_set(monkeypatch):
  assert xla_options.as_flags({'a': '', 'b': True, 'c': 'X,Y'}) == '--a= --b=true --c=X,Y'
  facts = _facts('x86_64', 'avx2')
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT')
  assert xla_options.set_xla_flags(facts) == (
      '--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT')
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  assert xla_options.set_xla_flags(facts) == (
      '--xla_force_host_platform_device_count=2 --xla_cpu_experimental_ynn_fusion_type=')


@pytest.mark.parametrize('name', sorted(xla_options.CANDIDATES))
def test_every_candidate_compiles_in_this_jaxlib_and_keeps_the_numbers(name):
  """A conv + bias + ReLU and a dot, as the backbone and head have them: the same values
  under each candidate as under XLA's defaults (an unknown option name fails to compile)."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 16))
  k = jax.random.normal(jax.random.key(1), (1, 7, 16, 24)) * 0.1
  w = jax.random.normal(jax.random.key(2), (24, 8))

  def f(x, k, w):
    y = jax.nn.relu(jax.lax.conv_general_dilated(
        x, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + 0.5)
    return jnp.einsum('nhwc,co->nhwo', y, w)
  want = jax.jit(f).lower(x, k, w).compile()(x, k, w)
  got = jax.jit(f).lower(x, k, w).compile(
      compiler_options=xla_options.CANDIDATES[name])(x, k, w)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
