"""Optimizers with Keras' conventions, and the masked per-rule optimizer over a param tree.

`keras_rmsprop` is Keras' RMSprop (v starts at 0, eps 1e-7):
    v <- rho * v + (1 - rho) * g^2
    eps_in_sqrt=False:  m <- momentum * m + lr * g / (sqrt(v) + eps)
                        (tf.keras OptimizerV2, TF 2.0-2.10, the notebook's era; in tf_keras:
                        `optimizers.legacy.RMSprop` with momentum 0)
    eps_in_sqrt=True:   m <- momentum * m + lr * g / sqrt(v + eps)
                        (TF >= 2.11 / tf_keras `optimizers.RMSprop`, and the legacy one with
                        momentum > 0, which calls the `ApplyRMSProp` op)
    w <- w - m
The two differ a lot for tiny gradients (v starts at 0), so the config picks one
(`optimizer.eps_in_sqrt`); tests/test_rmsprop.py checks both against tf_keras.

`make(config.optimizer, params)` builds an `optax.multi_transform` keyed by the labels of
`inception.train.param_rules`: frozen leaves get `optax.set_to_zero()`, which allocates no state, and
every other multiplier gets the base optimizer at lr * multiplier.
"""

from __future__ import annotations

from typing import Any

import optax

from inception import checks
from inception.train import param_rules

OPTIMIZERS = ('rmsprop', 'adam', 'sgd')


def keras_rmsprop(lr: float, rho: float = 0.9, epsilon: float = 1e-7, momentum: float = 0.0,
                  eps_in_sqrt: bool = False) -> optax.GradientTransformation:
  """Keras' RMSprop (non-centered), accumulator initialised to 0; see the module docstring."""
  return optax.rmsprop(lr, decay=rho, eps=epsilon, eps_in_sqrt=eps_in_sqrt, initial_scale=0.0,
                       momentum=momentum if momentum else None)


def base(opt: Any, lr: float) -> optax.GradientTransformation:
  """The base optimizer named by `opt.name` at learning rate `lr` (config `optimizer`)."""
  if opt.name == 'rmsprop':
    return keras_rmsprop(lr, opt.rho, opt.epsilon, opt.momentum, opt.get('eps_in_sqrt', False))
  if opt.name == 'adam':
    # Keras' Adam applies eps to the bias-uncorrected sqrt(v); optax after correction. The
    # difference is O(eps) and only matters in the first steps.
    return optax.adam(lr, b1=opt.get('beta1', 0.9), b2=opt.get('beta2', 0.999), eps=opt.epsilon)
  if opt.name == 'sgd':
    return optax.sgd(lr, momentum=opt.momentum if opt.momentum else None)
  raise ValueError(f'optimizer.name={opt.name!r} is unknown; valid: {", ".join(OPTIMIZERS)}')


def validate_config(opt: Any) -> None:
  """Checks `config.optimizer`, naming the key and what is valid."""
  checks.choice('optimizer.name', opt.name, OPTIMIZERS)
  checks.number('optimizer.lr', opt.lr, lo=0, lo_open=True)
  checks.number('optimizer.rho', opt.rho, lo=0, hi=1, hi_open=True)
  checks.number('optimizer.epsilon', opt.epsilon, lo=0, lo_open=True)
  checks.number('optimizer.momentum', opt.momentum, lo=0, hi=1, hi_open=True)
  checks.boolean('optimizer.eps_in_sqrt', opt.eps_in_sqrt)
  param_rules.check_rules(opt.param_rules, 'config.optimizer.param_rules')
  if not opt.param_rules:
    raise ValueError('config.optimizer.param_rules is empty; end it with (".*", 1.0)')


def make(opt: Any, params: Any) -> optax.GradientTransformation:
  """Masked optimizer for the whole `params` tree per `opt.param_rules` (first match wins).

  Args:
    opt: the config's `optimizer` section (name, lr, rho, epsilon, momentum, param_rules).
    params: the parameter tree (arrays or ShapeDtypeStructs); only its structure is used.
  Returns:
    An optax transformation whose state holds nothing for frozen (multiplier 0) leaves.
  """
  labels = param_rules.labels(params, opt.param_rules)
  used = sorted(set(jax_leaves(labels)))
  transforms = {}
  for lab in used:
    if lab == param_rules.FROZEN:
      transforms[lab] = optax.set_to_zero()
    else:
      mult = float(lab[len('lr_x'):])
      transforms[lab] = base(opt, opt.lr * mult)
  return optax.multi_transform(transforms, labels)


def jax_leaves(tree: Any) -> list:
  import jax
  return jax.tree.leaves(tree)
