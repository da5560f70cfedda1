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

`make(config.optimizer, params, steps_per_epoch=, total_steps=)` builds an
`optax.multi_transform` keyed by the labels of `inception.train.param_rules`: frozen leaves get
`optax.set_to_zero()`, which allocates no state, and every other multiplier gets the base
optimizer at `schedule(step) * multiplier`. Around it, all optional and off by default (then
the optimizer is exactly the constant-lr one, state included):
  - a learning-rate schedule (`optimizer.schedule`: constant | cosine | step, with an optional
    linear warmup), its position counted in the optimizer state, so a resumed run continues it;
  - decoupled weight decay (`optimizer.weight_decay`): w <- w - lr(t) * multiplier * wd * w
    after the base update (AdamW's rule, also for RMSprop and SGD), never on frozen leaves nor
    on paths matching `optimizer.weight_decay_exclude` (default: biases and BatchNorm);
  - gradient clipping by the global norm of the trainable gradients (`optimizer.clip_global_norm`).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import optax

from inception import checks
from inception.train import param_rules

OPTIMIZERS = ('rmsprop', 'adam', 'sgd')
SCHEDULES = ('constant', 'cosine', 'step')


def keras_rmsprop(lr: float, rho: float = 0.9, epsilon: float = 1e-7, momentum: float = 0.0,
                  eps_in_sqrt: bool = False) -> optax.GradientTransformation:
  """Keras' RMSprop (non-centered), accumulator initialised to 0; see the module docstring."""
  return optax.rmsprop(lr, decay=rho, eps=epsilon, eps_in_sqrt=eps_in_sqrt, initial_scale=0.0,
                       momentum=momentum if momentum else None)


def base(opt: Any, lr: float | optax.Schedule) -> optax.GradientTransformation:
  """The base optimizer named by `opt.name` at learning rate `lr`, a number or a schedule of
  the update count (config `optimizer`)."""
  if opt.name == 'rmsprop':
    return keras_rmsprop(lr, opt.rho, opt.epsilon, opt.momentum, opt.get('eps_in_sqrt', False))
  if opt.name == 'adam':
    # Keras' Adam applies eps to the bias-uncorrected sqrt(v); optax after correction. The
    # difference is O(eps) and only matters in the first steps.
    return optax.adam(lr, b1=opt.get('beta1', 0.9), b2=opt.get('beta2', 0.999), eps=opt.epsilon)
  if opt.name == 'sgd':
    return optax.sgd(lr, momentum=opt.momentum if opt.momentum else None)
  raise ValueError(f'optimizer.name={opt.name!r} is unknown; valid: {", ".join(OPTIMIZERS)}')


def learning_rate(opt: Any, steps_per_epoch: int | None = None,
                  total_steps: int | None = None) -> float | optax.Schedule:
  """`opt.lr` (constant, no warmup) or the schedule of update counts that `opt.schedule`,
  `opt.warmup_epochs`, `opt.end_lr_factor`, `opt.decay_epochs` and `opt.decay_factor` describe.

  Epochs become steps by `steps_per_epoch` (rounded); cosine decays over the steps after the
  warmup up to `total_steps`, to lr * end_lr_factor; step multiplies by decay_factor at each
  epoch of decay_epochs; the warmup rises linearly from 0 to lr.
  """
  name, lr = opt.schedule, float(opt.lr)
  if name == 'constant' and not opt.warmup_epochs:
    return lr
  if steps_per_epoch is None or total_steps is None:
    raise ValueError(f'optimizer.schedule={name!r} (warmup_epochs={opt.warmup_epochs}) needs '
                     f'steps_per_epoch and total_steps')
  warmup = round(float(opt.warmup_epochs) * steps_per_epoch)
  if name == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1),
                                       alpha=float(opt.end_lr_factor))
  elif name == 'step':
    main = optax.piecewise_constant_schedule(lr, {
        round(float(e) * steps_per_epoch) - warmup: float(opt.decay_factor)
        for e in opt.decay_epochs})
  else:
    main = optax.constant_schedule(lr)
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def _scaled(lr: float | optax.Schedule, factor: float) -> float | optax.Schedule:
  if callable(lr):
    return lambda count: factor * lr(count)
  return lr * factor


def decays(path: str, exclude: tuple[str, ...]) -> bool:
  """Whether weight decay applies to the param at '/'-joined `path` (no `exclude` regex
  matches it; frozen leaves never reach this)."""
  return not any(re.search(rule, path) for rule in exclude)


def _decay_mask(exclude: tuple[str, ...]) -> Callable[[Any], Any]:
  def mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: decays(jax.tree_util.keystr(p, simple=True, separator='/'), exclude),
        params)
  return mask


def with_weight_decay(tx: optax.GradientTransformation, lr: float | optax.Schedule,
                      weight_decay: float, exclude: tuple[str, ...]
                      ) -> optax.GradientTransformation:
  """`tx`, then the decoupled decay -lr(t) * weight_decay * w on the leaves that `decays`."""
  if callable(lr):
    rate = lambda count: -weight_decay * lr(count)
  else:
    rate = -weight_decay * lr
  return optax.chain(tx, optax.add_decayed_weights(rate, mask=_decay_mask(exclude)))


def validate_config(opt: Any) -> None:
  """Checks `config.optimizer`, naming the key and what is valid."""
  checks.choice('optimizer.name', opt.name, OPTIMIZERS)
  checks.number('optimizer.lr', opt.lr, lo=0, lo_open=True)
  checks.choice('optimizer.schedule', opt.schedule, SCHEDULES)
  checks.number('optimizer.warmup_epochs', opt.warmup_epochs, lo=0)
  checks.number('optimizer.end_lr_factor', opt.end_lr_factor, lo=0, hi=1)
  checks.number('optimizer.decay_factor', opt.decay_factor, lo=0, hi=1, lo_open=True)
  epochs = tuple(opt.decay_epochs)
  for e in epochs:
    checks.number('optimizer.decay_epochs[]', e, lo=0, lo_open=True)
  if list(epochs) != sorted(set(epochs)):
    raise ValueError(f'config.optimizer.decay_epochs={epochs} must be increasing epochs, '
                     f'e.g. (6, 9)')
  if opt.schedule == 'step' and not epochs:
    raise ValueError('config.optimizer.schedule="step" needs config.optimizer.decay_epochs, '
                     'e.g. (6, 9)')
  checks.number('optimizer.weight_decay', opt.weight_decay, lo=0)
  for rule in opt.weight_decay_exclude:
    try:
      re.compile(rule)
    except (re.error, TypeError) as e:
      raise ValueError(f'config.optimizer.weight_decay_exclude: {rule!r} is not a regex '
                       f'({e})') from None
  checks.number('optimizer.clip_global_norm', opt.clip_global_norm, lo=0)
  checks.number('optimizer.rho', opt.rho, lo=0, hi=1, hi_open=True)
  checks.number('optimizer.epsilon', opt.epsilon, lo=0, lo_open=True)
  checks.number('optimizer.momentum', opt.momentum, lo=0, hi=1, hi_open=True)
  checks.boolean('optimizer.eps_in_sqrt', opt.eps_in_sqrt)
  param_rules.check_rules(opt.param_rules, 'config.optimizer.param_rules')
  if not opt.param_rules:
    raise ValueError('config.optimizer.param_rules is empty; end it with (".*", 1.0)')


def make(opt: Any, params: Any, *, steps_per_epoch: int | None = None,
         total_steps: int | None = None) -> optax.GradientTransformation:
  """Masked optimizer for the whole `params` tree per `opt.param_rules` (first match wins).

  Args:
    opt: the config's `optimizer` section.
    params: the parameter tree (arrays or ShapeDtypeStructs); only its structure is used.
    steps_per_epoch, total_steps: the run's; needed by a schedule or a warmup.
  Returns:
    An optax transformation whose state holds nothing for frozen (multiplier 0) leaves.
  """
  lr = learning_rate(opt, steps_per_epoch, total_steps)
  labels = param_rules.labels(params, opt.param_rules)
  transforms = {}
  for lab in sorted(set(jax.tree.leaves(labels))):
    if lab == param_rules.FROZEN:
      transforms[lab] = optax.set_to_zero()
      continue
    rule_lr = _scaled(lr, float(lab[len('lr_x'):]))
    transforms[lab] = base(opt, rule_lr)
    if opt.weight_decay:
      transforms[lab] = with_weight_decay(transforms[lab], rule_lr, float(opt.weight_decay),
                                          tuple(opt.weight_decay_exclude))
  tx = optax.multi_transform(transforms, labels)
  if opt.clip_global_norm:
    # The norm of the trainable gradients only: frozen leaves' are zeroed first.
    frozen = jax.tree.map(lambda lab: lab == param_rules.FROZEN, labels)
    tx = optax.chain(optax.masked(optax.set_to_zero(), frozen),
                     optax.clip_by_global_norm(float(opt.clip_global_norm)), tx)
  return tx

