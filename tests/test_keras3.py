"""Keras 3 on its JAX backend (tests/reference/keras3_models.py, the peer
bench/keras3_vs_ours.py times) computes our mixed7 features from the same weights: the weight
copy and the architecture agree."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# In a subprocess: KERAS_BACKEND must be set before keras is first imported.
CHILD = textwrap.dedent('''
  import sys
  import numpy as np
  import keras
  if keras.backend.backend() != 'jax':
    sys.exit(77)
  import jax
  from tests.reference import keras3_models, keras_models
  from inception.models import inception_v3 as model_lib
  size = 75  # The smallest InceptionV3 input: a cheap build and forward.
  x = np.random.default_rng(0).uniform(0, 1, (2, size, size, 3)).astype(np.float32)
  model = model_lib.InceptionV3(stop_at='mixed7')
  variables = jax.tree.map(np.asarray, model.init(jax.random.key(0), x))
  rng = np.random.default_rng(1)  # Random BatchNorm statistics, so the BN arithmetic counts.
  variables['batch_stats'] = jax.tree_util.tree_map_with_path(
      lambda path, a: (rng.uniform(0.3, 3.0, a.shape) if path[-1].key == 'var'
                       else rng.normal(0, 0.5, a.shape)).astype(np.float32),
      variables['batch_stats'])
  backbone = keras3_models.backbone_of(keras3_models.build_model(size, variables, seed=0))
  assert len(keras_models.keras_units(backbone)) == 70
  want = backbone.predict_on_batch(x)
  got = np.asarray(jax.jit(model.apply)(variables, x))
  err = np.abs(got - want).max() / np.abs(want).max()
  print(f'max relative difference {err:.1e}')
  assert err < 1e-4, err
''')


@pytest.mark.slow
def test_keras3_jax_forward_matches_ours():
  if importlib.util.find_spec('keras') is None:
    pytest.skip('keras (3) is not installed')
  env = dict(os.environ, KERAS_BACKEND='jax', TF_CPP_MIN_LOG_LEVEL='2')
  r = subprocess.run([sys.executable, '-c', CHILD], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=600)
  if r.returncode == 77:
    pytest.skip(f'keras 3 with the jax backend is unavailable: {r.stderr[-300:]}')
  assert r.returncode == 0, r.stdout + r.stderr[-3000:]
  assert 'max relative difference' in r.stdout
