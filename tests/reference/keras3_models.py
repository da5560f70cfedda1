"""The Keras 3 references (`keras`, on the backend KERAS_BACKEND names; JAX for the benchmark).

The seed's model as a JAX user would write it in Keras 3: `keras.applications.InceptionV3(
weights=None, include_top=False)` cut at mixed7, frozen, Flatten -> Dense(1024, relu) ->
Dropout(0.2) -> Dense(1, sigmoid), RMSprop 1e-3, binary cross-entropy. Keras 3 names and
orders the conv/BatchNorm layers as tf_keras does, so the weight copy is
`keras_models.load_flax_variables`, the model `keras_models.seed_model` with this Keras.
KERAS_BACKEND must be set before `keras` is first imported (a fresh process).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tests.reference import keras_models


def build_model(image_size: int = 150, variables: Mapping[str, Any] | None = None,
                cut: str = 'mixed7', learning_rate: float = 1e-3, seed: int | None = None):
  """`keras_models.build_model` in Keras 3: the same arguments, a compiled `keras.Model`.

  `seed` (when given) goes to `keras.utils.set_random_seed`; `variables` (ours, up to the
  blocks they hold) are copied into the backbone by `keras_models.load_flax_variables`.
  """
  import keras
  return keras_models.seed_model(keras, image_size, variables, cut, learning_rate, seed)


def backbone_of(model, cut: str = 'mixed7'):
  """`model`'s frozen backbone alone: input -> layer `cut`'s output (the same layers)."""
  import keras
  return keras.Model(model.input, model.get_layer(cut).output)
