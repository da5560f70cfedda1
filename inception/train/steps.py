"""Train state, losses and the jitted train / eval / predict steps (pure functions of pytrees).

Freezing: `mask` (from `inception.train.param_rules.trainable_mask`) splits the params into a trainable
and a frozen part; the loss is differentiated with respect to the trainable part ONLY, so JAX
never builds a backward pass through frozen layers (a fully frozen backbone costs one forward
pass). Frozen params and frozen BatchNorm statistics are passed through untouched (bit-for-bit).

Randomness: dropout uses `fold_in(base_key, step)`, so a resumed run replays exactly.

On CPU the steps compile with the options chosen for the host's CPU kind
(`inception/train/xla_options.py`; on every kind measured: YNNPACK fusions off, XLA's Eigen
convolutions; docs/performance.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from inception import checks
from inception.train import metrics
from inception.train import param_rules
from inception.train import sharding
from inception.train import xla_options


TTA_MODES = ('none', 'flip')
CLASS_WEIGHT_MODES = ('none', 'balanced')  # Or an explicit 'class:weight,...' mapping.


@flax.struct.dataclass
class TrainState:
  """Everything needed to resume: step (int32 scalar), params, batch_stats, opt_state, and
  ema: the exponential moving average of the trainable params (their subtree), or None."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema: Any = None


def create_state(variables: dict, tx: optax.GradientTransformation, *, mask: Any = None,
                 ema: bool = False) -> TrainState:
  """The state at step 0; with `ema`, the average starts at the trainable params (`mask`)."""
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                    ema=param_rules.split(params, mask)[0] if ema else None)


def eval_params(state: TrainState, mask: Any) -> Any:
  """The params evaluation uses: the EMA of the trainable ones (frozen ones as they are) when
  the state keeps one, else the params."""
  if state.ema is None:
    return state.params
  return with_ema(state.params, state.ema, mask)


def with_ema(params: Any, ema: Any, mask: Any) -> Any:
  """`params` with their trainable (`mask`) leaves replaced by the moving average `ema`."""
  return param_rules.merge(ema, param_rules.split(params, mask)[1])


def loss_and_correct(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
                     class_weights: Any = None) -> tuple[jax.Array, jax.Array]:
  """Per-example loss and correctness ([B] float32 each).

  logits [B, 1]: binary cross-entropy from the logit (Keras' sigmoid + binary_crossentropy,
  without its 1e-7 clipping); logits [B, K>1]: softmax cross-entropy. labels: int [B].
  label_smoothing e: the targets are y * (1 - e) + e / K (K = 2 for one logit), as Keras'
  `label_smoothing` (binary: y * (1 - e) + e / 2) and `optax.smooth_labels` compute them.
  class_weights: float [K] in label order (K = 2 for one logit), or None (unweighted): each
  example's loss times the weight of its (true) label, as Keras' `class_weight`; the batch
  loss is then the plain mean (sum / B, not divided by the weights' sum).
  """
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    z = logits[:, 0]
    target = labels.astype(jnp.float32)
    if label_smoothing:
      target = target * (1.0 - label_smoothing) + 0.5 * label_smoothing
    loss = optax.sigmoid_binary_cross_entropy(z, target)
    pred = (z > 0).astype(jnp.int32)
  else:
    if label_smoothing:
      target = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
      loss = optax.softmax_cross_entropy(logits, target)
    else:
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if class_weights is not None:
    loss = loss * jnp.asarray(class_weights, jnp.float32)[labels]
  return loss, (pred == labels).astype(jnp.float32)


def probabilities(logits: jax.Array) -> jax.Array:
  """[B, K] class probabilities (K = 2 for a 1-logit binary head)."""
  if logits.shape[-1] == 1:
    p1 = jax.nn.sigmoid(logits[:, 0].astype(jnp.float32))
    return jnp.stack([1.0 - p1, p1], axis=-1)
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def _options(compiler_options: dict | None) -> dict:
  return xla_options.compiler_options() if compiler_options is None else compiler_options


def _with_trained_stats(batch_stats: Any, stats: Any, train_blocks: tuple[str, ...]) -> Any:
  """`batch_stats` with the `train_blocks`' statistics taken from `stats` (the mutated ones):
  only those, so every other block's stays bit-for-bit."""
  backbone = dict(batch_stats['backbone'])
  for block in train_blocks:
    backbone[block] = stats['backbone'][block]
  return {**batch_stats, 'backbone': backbone}


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, mask: Any, *,
                    train_blocks: Collection[str] = (), label_smoothing: float = 0.0,
                    ema_decay: float = 0.0, guard_nonfinite: bool = True,
                    grad_accum_steps: int = 1, class_weights: Any = None,
                    state_sharding: Any = None, batch_sharding: Any = None,
                    donate: bool = True, compiler_options: dict | None = None) -> Callable:
  """Jitted `step(state, batch, base_key) -> (state, metrics)`.

  batch: {'image': float [B, H, W, 3], 'label': int [B]}; with `model` a `transfer.HeadOnly`
  (the feature cache), 'image' holds cut-layer features [B, h, w, C] and the frozen backbone
  params pass through. label_smoothing, class_weights ([K] or None = unweighted): of the loss
  (`loss_and_correct`). ema_decay: with a state that keeps an EMA, ema <- d * ema + (1 - d) *
  params after each update. metrics: scalars 'loss' (the smoothed, class-weighted one when so
  trained), 'accuracy' (batch means) and 'nonfinite' (1 when
  this step's loss or gradients were not finite; the update was then skipped when
  `guard_nonfinite`). With shardings given, the state is laid out
  with `state_sharding` (replicated) and the batch with `batch_sharding` (split over 'data').
  compiler_options: XLA options; None = `xla_options.compiler_options()`, {} = XLA's defaults.

  grad_accum_steps k > 1: the batch [B, ...] is split into k micro-batches of B/k, micro-batch
  i = rows {j*k + i} (so each device holds an equal share of every micro-batch of a batch split
  over 'data'); a `jax.lax.scan` sums their mean-loss gradients (trainable params only), the
  update takes sum / k, ONE optimizer update per call; 'loss' and 'accuracy' are the means over
  the micro-batches, 'nonfinite' is of the accumulated gradient. Micro-batch i's dropout key is
  `fold_in(fold_in(base_key, step), i)` (k = 1: `fold_in(base_key, step)`, as without it). Not
  optax.MultiSteps: it would count micro-steps as steps (one call per micro-batch), so the
  state's step, checkpoints, metrics, schedules, data order and dropout would no longer be
  functions of the update step. Without BatchNorm training (and dropout aside) the update is
  one batch of B's, to float rounding; with `train_blocks`, each micro-batch normalises with
  its own statistics and the moving averages are updated k times in sequence (momentum applied
  k times), which differs from one batch of B (expected).
  """
  train_blocks = tuple(train_blocks)
  if isinstance(grad_accum_steps, bool) or not isinstance(grad_accum_steps, int) or (
      grad_accum_steps < 1):
    raise ValueError(f'grad_accum_steps={grad_accum_steps!r} must be an integer >= 1')
  micro_sharding = None
  if grad_accum_steps > 1 and isinstance(batch_sharding, jax.sharding.NamedSharding):
    micro_sharding = jax.sharding.NamedSharding(
        batch_sharding.mesh, jax.sharding.PartitionSpec(None, *batch_sharding.spec))

  def accumulate(grad_fn, trainable, batch, rng, batch_stats):
    """(loss, accuracy, stats, grads) over the micro-batches, as `grad_fn` gives them for one."""
    k = grad_accum_steps
    # [B, ...] -> [B/k, k, ...] -> [k, B/k, ...]: micro-batch i = rows j*k + i.
    micro = jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch)
    if micro_sharding is not None:
      micro = jax.lax.with_sharding_constraint(micro, micro_sharding)

    def body(carry, xs):
      grad_sum, loss_sum, acc_sum, stats = carry
      i, mb = xs
      (loss, (acc, new_stats)), grads = grad_fn(trainable, mb, jax.random.fold_in(rng, i),
                                                stats)
      if train_blocks:  # The next micro-batch sees this one's moving averages.
        stats = _with_trained_stats(stats, new_stats, train_blocks)
      return (jax.tree.map(jnp.add, grad_sum, grads), loss_sum + loss, acc_sum + acc,
              stats), None

    zero = jnp.zeros((), jnp.float32)
    init = (jax.tree.map(jnp.zeros_like, trainable), zero, zero, batch_stats)
    (grads, loss, acc, stats), _ = jax.lax.scan(body, init, (jnp.arange(k), micro))
    return (loss / k, acc / k, stats if train_blocks else None,
            jax.tree.map(lambda g: g / k, grads))

  def step(state: TrainState, batch: dict, base_key: jax.Array):
    trainable, frozen = param_rules.split(state.params, mask)
    rng = jax.random.fold_in(base_key, state.step)

    def loss_fn(trainable_params, batch, rng, batch_stats):
      variables = {'params': param_rules.merge(trainable_params, frozen),
                   'batch_stats': batch_stats}
      if train_blocks:
        logits, mutated = model.apply(variables, batch['image'], train=True,
                                      train_blocks=train_blocks, rngs={'dropout': rng},
                                      mutable=['batch_stats'])
        stats = mutated['batch_stats']
      else:
        logits = model.apply(variables, batch['image'], train=True, rngs={'dropout': rng})
        stats = None
      loss, correct = loss_and_correct(logits, batch['label'], label_smoothing, class_weights)
      return loss.mean(), (correct.mean(), stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
      (loss, (acc, stats)), grads = grad_fn(trainable, batch, rng, state.batch_stats)
    else:
      loss, acc, stats, grads = accumulate(grad_fn, trainable, batch, rng, state.batch_stats)

    def update(trainable, opt_state, batch_stats, ema, grads, stats):
      # Frozen leaves need a gradient leaf for multi_transform's tree; set_to_zero drops it,
      # and these constant zeros are dead code after compilation.
      full_grads = param_rules.merge(grads, jax.tree.map(jnp.zeros_like, frozen))
      updates, opt_state = tx.update(full_grads, opt_state,
                                     param_rules.merge(trainable, frozen))
      trainable = optax.apply_updates(trainable, param_rules.split(updates, mask)[0])
      if train_blocks:
        batch_stats = _with_trained_stats(batch_stats, stats, train_blocks)
      if ema is not None:
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, trainable)
      return trainable, opt_state, batch_stats, ema

    finite = jnp.isfinite(loss) & jnp.all(jnp.asarray(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    operands = (trainable, state.opt_state, state.batch_stats, state.ema, grads, stats)
    if guard_nonfinite:
      # A conditional rather than a select of new vs old values: the update then writes the
      # donated buffers in place (a select keeps the old optimizer state alive, which costs
      # XLA a copy of it; measured in docs/performance.md). Not
      # optax.apply_if_finite (also a lax.cond): it guards the optimizer alone, and the
      # BatchNorm statistics of `train_blocks` must be skipped with the same batch.
      new_trainable, opt_state, batch_stats, ema = jax.lax.cond(
          finite, update, lambda t, o, b, e, *_: (t, o, b, e), *operands)
    else:
      new_trainable, opt_state, batch_stats, ema = update(*operands)
    new_state = TrainState(step=state.step + 1,
                           params=param_rules.merge(new_trainable, frozen),
                           batch_stats=batch_stats, opt_state=opt_state, ema=ema)
    metrics = {'loss': loss, 'accuracy': acc, 'nonfinite': (~finite).astype(jnp.int32)}
    return new_state, metrics

  kwargs = {}
  if state_sharding is not None:
    kwargs = dict(in_shardings=(state_sharding, batch_sharding, state_sharding),
                  out_shardings=(state_sharding, state_sharding))
  return jax.jit(step, donate_argnums=(0,) if donate else (),
                 compiler_options=_options(compiler_options), **kwargs)


def log_probabilities(logits: jax.Array) -> jax.Array:
  """[B, K] log class probabilities (K = 2 for a 1-logit binary head), computed stably."""
  logits = logits.astype(jnp.float32)
  if logits.shape[-1] == 1:
    return jnp.stack([jax.nn.log_sigmoid(-logits[:, 0]), jax.nn.log_sigmoid(logits[:, 0])],
                     axis=-1)
  return jax.nn.log_softmax(logits, axis=-1)


def check_tta(tta: str) -> None:
  checks.choice('eval.tta', tta, TTA_MODES)


def parse_class_weight(value: Any) -> str | dict[str, float]:
  """train.class_weight's syntax: 'none', 'balanced', or the {class name: weight} of
  'name:w,name:w,...' (each name once, each weight a finite number > 0; the names are checked
  against the data's in `class_weights`). ValueError names the key and the bad part."""
  key, valid = 'config.train.class_weight', "none, balanced or 'class:weight,...'"
  if not isinstance(value, str):
    raise ValueError(f'{key}={value!r} must be a string: {valid}')
  if value in CLASS_WEIGHT_MODES:
    return value
  weights: dict[str, float] = {}
  for item in value.split(','):
    name, sep, number = item.rpartition(':')
    name = name.strip()
    if not sep or not name:
      raise ValueError(f'{key}={value!r}: {item!r} is not class:weight; valid: {valid} '
                       "(e.g. 'dog:1.0,horse:10.0')")
    try:
      weight = float(number)
    except ValueError:
      weight = math.nan
    if not math.isfinite(weight) or weight <= 0:
      raise ValueError(f'{key}={value!r}: the weight of class {name!r}, {number.strip()!r}, '
                       'must be a finite number > 0')
    if name in weights:
      raise ValueError(f'{key}={value!r} names class {name!r} more than once')
    weights[name] = weight
  return weights


def class_weights(value: str, class_names: Sequence[str], train_labels: np.ndarray
                  ) -> np.ndarray | None:
  """train.class_weight resolved for the data: None for 'none' (unweighted); else float32 [K]
  in label order. 'balanced': n / (K * n_k) over the train split's labels (what sklearn's
  compute_class_weight('balanced') computes); a mapping: each class's weight.

  Raises:
    ValueError: naming the key: 'balanced' with a class that has no training example; a
      mapping naming a class the data lacks or leaving one out (the valid names listed).
  """
  spec = parse_class_weight(value)
  if spec == 'none':
    return None
  names = list(class_names)
  key = f'config.train.class_weight={value!r}'
  if spec == 'balanced':
    counts = np.bincount(np.asarray(train_labels, np.int64), minlength=len(names))
    empty = [n for n, c in zip(names, counts) if c == 0]
    if empty:
      raise ValueError(f'{key}: classes {empty} have no training example; give explicit '
                       'weights or none')
    return (len(train_labels) / (len(names) * counts.astype(np.float64))).astype(np.float32)
  unknown = [n for n in spec if n not in names]
  missing = [n for n in names if n not in spec]
  if unknown or missing:
    raise ValueError(f'{key}: ' + '; '.join(
        ([f'unknown classes {unknown}'] if unknown else []) +
        ([f'no weight for classes {missing}'] if missing else [])) +
        f'; name every class of the data exactly once: {", ".join(names)}')
  return np.asarray([spec[n] for n in names], np.float32)


def validate_config(config: Any) -> None:
  """Checks the keys the steps take: train.label_smoothing, train.ema_decay,
  train.grad_accum_steps (train.batch_size must divide by it), train.class_weight's syntax,
  eval.tta."""
  checks.number('train.label_smoothing', config.train.label_smoothing, lo=0, hi=1, hi_open=True)
  k = config.train.grad_accum_steps
  checks.number('train.grad_accum_steps', k, lo=1, integer=True)
  if isinstance(config.train.batch_size, int) and config.train.batch_size % k:
    raise ValueError(f'config.train.batch_size={config.train.batch_size} is not divisible by '
                     f'config.train.grad_accum_steps={k} (micro-batches of batch_size / '
                     f'grad_accum_steps); use a batch_size that is a multiple of {k}, or a '
                     f'grad_accum_steps that divides {config.train.batch_size}')
  checks.number('train.ema_decay', config.train.ema_decay, lo=0, hi=1, hi_open=True)
  parse_class_weight(config.train.class_weight)
  check_tta(config.eval.tta)


def views(images: jax.Array, tta: str) -> list[jax.Array]:
  """The test-time views of images [B, H, W, C]: 'none' the images, 'flip' also their mirror
  images (left-right, the training augmentation's flip)."""
  check_tta(tta)
  return [images] if tta == 'none' else [images, jnp.flip(images, axis=2)]


def scale_logits(logits: jax.Array, temperature: float | None) -> jax.Array:
  """float32 logits / temperature (temperature scaling, `inception.train.calibration`); None:
  the logits unchanged."""
  logits = logits.astype(jnp.float32)
  return logits if temperature is None else logits / jnp.float32(temperature)


def view_logits(model: nn.Module, variables: Any, images: jax.Array, tta: str,
                temperature: float | None = None) -> list[jax.Array]:
  """The (temperature-scaled) float32 logits [B, L] of each test-time view (`views`)."""
  return [scale_logits(model.apply(variables, v, train=False), temperature)
          for v in views(images, tta)]


def mean_log_probabilities(logits: list[jax.Array]) -> jax.Array:
  """log of the mean over views of the class probabilities, [B, K], from each view's logits."""
  logps = [log_probabilities(l) for l in logits]
  return jax.nn.logsumexp(jnp.stack(logps), axis=0) - jnp.log(float(len(logps)))


def tta_log_probabilities(model: nn.Module, variables: Any, images: jax.Array, tta: str,
                          temperature: float | None = None) -> jax.Array:
  """log of the mean over `views` of the class probabilities, [B, K]."""
  return mean_log_probabilities(view_logits(model, variables, images, tta, temperature))


def predict_probabilities(model: nn.Module, variables: Any, images: jax.Array, *,
                          tta: str = 'none', temperature: float | None = None) -> jax.Array:
  """Class probabilities [B, K] (K >= 2) of preprocessed images [B, H, W, 3]: what predict,
  the Python API and the exported models compute. tta='flip': the mean of the image's and its
  mirror image's; temperature: the logits are divided by it first (None: not scaled)."""
  if tta == 'none':
    return probabilities(view_logits(model, variables, images, tta, temperature)[0])
  return jnp.exp(tta_log_probabilities(model, variables, images, tta, temperature))


def batch_sums(logits: list[jax.Array], labels: jax.Array, mask: jax.Array, num_classes: int
               ) -> dict:
  """Sums over the real examples (`mask`) of one batch, from each test-time view's logits
  [B, L] (already temperature-scaled): 'loss' (-log p(label)), 'correct', 'count',
  'confusion' int32 [K, K] (rows: true class, columns: predicted class), 'brier'
  (sum_k (p_k - y_k)^2), and per confidence bin b ((b/15, (b+1)/15]) 'bin_count',
  'bin_confidence' and 'bin_correct' [15]: what `inception.train.metrics` reports from."""
  k = max(num_classes, 2)
  labels = labels.astype(jnp.int32)
  if len(logits) == 1:
    loss, correct = loss_and_correct(logits[0], labels)
    probs = probabilities(logits[0])
    pred = jnp.argmax(probs, axis=-1)
  else:
    logp = mean_log_probabilities(logits)
    loss = -jnp.take_along_axis(logp, labels[:, None], 1)[:, 0]
    probs = jnp.exp(logp)
    pred = jnp.argmax(logp, axis=-1)
    correct = (pred == labels).astype(jnp.float32)
  m = mask.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, k)
  conf = jnp.einsum('bi,bj->ij', onehot * m[:, None], jax.nn.one_hot(pred, k)).astype(jnp.int32)
  top = jnp.max(probs, axis=-1)
  bins = jax.nn.one_hot(jnp.clip(jnp.ceil(top * metrics.ECE_BINS).astype(jnp.int32) - 1, 0,
                                 metrics.ECE_BINS - 1), metrics.ECE_BINS) * m[:, None]
  return {'loss': jnp.sum(loss * m), 'correct': jnp.sum(correct * m), 'count': jnp.sum(m),
          'confusion': conf, 'brier': jnp.sum(jnp.sum((probs - onehot) ** 2, -1) * m),
          'bin_count': jnp.sum(bins, 0), 'bin_confidence': bins.T @ top,
          'bin_correct': bins.T @ correct}


def make_eval_step(model: nn.Module, num_classes: int, *, tta: str = 'none',
                   temperature: float | None = None, replicated: Any = None,
                   batch_sharding: Any = None, compiler_options: dict | None = None
                   ) -> Callable:
  """Jitted `eval_step(variables, batch) -> sums` (`batch_sums`).

  batch: {'image', 'label', 'mask': bool [B]} (padded examples have mask False); 'image' is
  features for a `transfer.HeadOnly` model (then only tta='none').
  tta: 'flip' scores the mean of the image's and its mirror image's class probabilities: loss
  -log p(label), prediction its argmax.
  temperature: when given, sums also holds 'calibrated': the same sums with the logits divided
  by it (one forward pass serves both).
  """
  check_tta(tta)  # Now, not at the first batch.

  def eval_step(variables, batch):
    logits = view_logits(model, variables, batch['image'], tta)
    sums = batch_sums(logits, batch['label'], batch['mask'], num_classes)
    if temperature is not None:
      sums['calibrated'] = batch_sums([scale_logits(l, temperature) for l in logits],
                                      batch['label'], batch['mask'], num_classes)
    return sums

  kwargs = {}
  if replicated is not None:
    kwargs = dict(in_shardings=(replicated, batch_sharding), out_shardings=replicated)
  return jax.jit(eval_step, compiler_options=_options(compiler_options), **kwargs)


def make_predict_step(model: nn.Module, *, tta: str = 'none', temperature: float | None = None,
                      replicated: Any = None, batch_sharding: Any = None,
                      compiler_options: dict | None = None) -> Callable:
  """Jitted `predict_step(variables, images) -> probabilities [B, K]` (K >= 2), as
  `predict_probabilities` computes them."""
  check_tta(tta)

  def predict_step(variables, images):
    return predict_probabilities(model, variables, images, tta=tta, temperature=temperature)

  kwargs = {}
  if replicated is not None:
    kwargs = dict(in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding)
  return jax.jit(predict_step, compiler_options=_options(compiler_options), **kwargs)


def make_logits_step(model: nn.Module, *, tta: str = 'none', replicated: Any = None,
                     batch_sharding: Any = None, compiler_options: dict | None = None
                     ) -> Callable:
  """Jitted `logits_step(variables, images) -> [per view: float32 logits [B, L]]` (`views`),
  unscaled: what temperature scaling is fitted on."""
  check_tta(tta)

  def logits_step(variables, images):
    return view_logits(model, variables, images, tta)

  kwargs = {}
  if replicated is not None:
    kwargs = dict(in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding)
  return jax.jit(logits_step, compiler_options=_options(compiler_options), **kwargs)


def evaluate_batches(eval_step: Callable, variables: dict, batches, mesh) -> dict:
  """Runs `eval_step` over an iterable of host batches; returns 'loss' and 'accuracy' (means
  over the examples), 'count', 'confusion' and 'sums' (the summed `batch_sums`, numpy: what
  `inception.train.metrics.report` takes), and 'calibrated' (the same) for a step with a
  temperature."""
  total = None
  for batch in sharding.prefetch_to_device(batches, mesh):
    sums = eval_step(variables, batch)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  if total is None:
    raise ValueError('Evaluation got no batches (empty split?)')
  return _summary(jax.device_get(total))


def _summary(total: dict) -> dict:
  sums = {k: np.asarray(v) for k, v in total.items() if k != 'calibrated'}
  count = float(sums['count'])
  out = {'loss': float(sums['loss']) / count, 'accuracy': float(sums['correct']) / count,
         'count': int(count), 'confusion': sums['confusion'], 'sums': sums}
  if 'calibrated' in total:
    out['calibrated'] = _summary(total['calibrated'])
  return out
