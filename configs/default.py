"""Every knob of a training run, with its default and meaning.

    python train.py --config configs/default.py [--config.optimizer.lr=3e-4 ...]

Sections: seed, data (owned by the `data` package: `data.config.get_config()`), model,
optimizer, train, checkpoint, eval. `configs/validate.py` checks a config before any heavy work.
"""

from __future__ import annotations

import ml_collections

import data.config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default config. Takes no arg (kept for a uniform `get_config(arg)` signature)."""
  if arg:
    raise ValueError(f'configs/default.py takes no config arg, got {arg!r}')
  c = ml_collections.ConfigDict()
  # Base seed: parameter init (head + random backbones), data order and augmentation, dropout.
  c.seed = 0
  # Data: source, classes, split, image size, preprocessing, augmentation (see data/config.py).
  c.data = data.config.get_config()

  c.model = ml_collections.ConfigDict()
  # Backbone, a name in the registry `inception.backbones` (its endpoints, blocks,
  # minimum image size and pretrained weights).
  c.model.backbone = 'inception_v3'
  # Backbone endpoint to cut at: one of the backbone's `endpoints`; InceptionV3: stem,
  # mixed0..mixed10, avg_pool. The seed notebook: 'mixed7'.
  c.model.cut = 'mixed7'
  # Backbone weights: 'random' (random init, no file) or one of the backbone's named sources;
  # InceptionV3: 'tf2015' (the 2015 TF graph), 'keras' (Keras applications no-top),
  # 'keras_top', or a path to a weights file for inception.weights.load.
  c.model.weights = 'tf2015'
  # Head input: 'flatten' (Keras Flatten, the seed) or 'gap' (global average pool).
  c.model.head = 'flatten'
  # Units of the hidden Dense(relu) layer of the head; 0 = no hidden layer.
  c.model.dense_units = 1024
  # Dropout rate before the output layer (training only), in [0, 1).
  c.model.dropout = 0.2
  # Compute dtype: 'float32' or 'bfloat16' (mixed precision for GPU/TPU). Parameters,
  # optimizer state, logits and loss stay float32.
  c.model.dtype = 'float32'
  # Backbone blocks (of the backbone's `blocks`) whose BatchNorm runs in training mode
  # (batch statistics, running averages updated). Empty: every BatchNorm uses its running
  # statistics, as a frozen Keras backbone does. Usually the blocks unfrozen by param_rules.
  c.model.batchnorm_train_blocks = ()
  # Warm start: '<workdir>[:best|:latest|:<step>]' (default checkpoint: best) starts this run
  # from that run's parameters, the backbone and/or head leaves both models have (shapes
  # checked); the optimizer starts fresh; run.json records the lineage. '' = off.
  c.model.init_from = ''

  c.optimizer = ml_collections.ConfigDict()
  # 'rmsprop' (Keras semantics: eps outside the sqrt, accumulator starts at 0), 'adam', 'sgd'.
  c.optimizer.name = 'rmsprop'
  # Base learning rate (the schedule's peak).
  c.optimizer.lr = 1e-3
  # Learning-rate schedule over the run's steps: 'constant'; 'cosine' (from lr down to
  # lr * end_lr_factor at the last step); 'step' (lr times decay_factor at each epoch of
  # decay_epochs). Per-rule multipliers of param_rules scale it. Its position is in the
  # optimizer state, so a resumed run continues it.
  c.optimizer.schedule = 'constant'
  # Linear warmup from 0 to lr over this many epochs (fractions allowed), before the schedule.
  c.optimizer.warmup_epochs = 0.0
  # 'cosine': the final lr as a fraction of lr.
  c.optimizer.end_lr_factor = 0.0
  # 'step': the epochs (increasing; fractions allowed) after which lr is multiplied by
  # decay_factor, e.g. (6, 9).
  c.optimizer.decay_epochs = ()
  c.optimizer.decay_factor = 0.1
  # Decoupled weight decay (AdamW's rule, for every optimizer): w <- w - lr(t) * wd * w after
  # each update; 0 = off. Never on frozen params, nor on paths matching weight_decay_exclude.
  c.optimizer.weight_decay = 0.0
  # Regexes of param paths without weight decay; default: biases and BatchNorm parameters.
  c.optimizer.weight_decay_exclude = ('/bias$', '/bn/')
  # Clip the trainable gradients to this global norm before the update; 0 = off.
  c.optimizer.clip_global_norm = 0.0
  # RMSprop decay of the squared-gradient average (Keras' rho).
  c.optimizer.rho = 0.9
  # Numerical epsilon (Keras' default 1e-7).
  c.optimizer.epsilon = 1e-7
  # RMSprop only: True = lr * g / sqrt(v + eps), tf_keras.optimizers.RMSprop (TF >= 2.11, the
  # Keras our side-by-side comparisons run); False = lr * g / (sqrt(v) + eps), tf.keras
  # OptimizerV2 without momentum (TF 2.0-2.10, the notebook's era). With eps 1e-7 the two
  # differ only while v is tiny.
  c.optimizer.eps_in_sqrt = True
  # Momentum for rmsprop/sgd; 0 = none.
  c.optimizer.momentum = 0.0
  # Ordered (regex, lr multiplier) rules over '/'-joined param paths such as
  # 'backbone/mixed7/branch1x1/conv/kernel' or 'head/dense/kernel'. The first match wins;
  # multiplier 0.0 = frozen (no gradient, no optimizer state). Every param must match a rule.
  # Unfreeze mixed7 at a tenth of the lr: (('^backbone/mixed7/', 0.1), ('^backbone/', 0.0),
  # ('.*', 1.0)).
  c.optimizer.param_rules = (('^backbone/', 0.0), ('.*', 1.0))

  c.train = ml_collections.ConfigDict()
  # Epochs; one epoch = data.steps_per_epoch(info, batch_size) steps (num_train // batch).
  c.train.epochs = 10
  # Global batch size (over all devices and hosts); must divide by the device count.
  c.train.batch_size = 20
  # A non-finite loss or gradient: 'stop' (report the step, keep the last good checkpoint,
  # exit non-zero) or 'skip' (drop that batch's update and go on).
  c.train.on_nonfinite = 'stop'
  # Label smoothing of the training loss, in [0, 1): targets y * (1 - e) + e / K (K = 2 for
  # the one-logit sigmoid head). Evaluation reports the plain cross-entropy.
  c.train.label_smoothing = 0.0
  # Class weights of the training loss (Keras' class_weight: each example's loss times its
  # label's weight, then the batch mean): 'none'; 'balanced' (n / (K * n_class) over the train
  # split, sklearn's); or every class once, 'dog:1.0,horse:10.0'. Evaluation is unweighted.
  c.train.class_weight = 'none'
  # Exponential moving average of the trainable params, ema <- d * ema + (1 - d) * params after
  # every update; 0 = off. When on, every evaluation (validation, test, the `best` choice, eval
  # and predict) uses the average; it is saved in the checkpoints (item 'ema').
  c.train.ema_decay = 0.0
  # Gradient accumulation: each step splits the batch into this many micro-batches of
  # batch_size / grad_accum_steps (rows j*k + i form micro-batch i), sums their gradients in
  # one jitted step and makes ONE update (steps, checkpoints and metrics count updates);
  # batch_size must divide by grad_accum_steps * device count. 1 = off. Trained BatchNorm
  # (model.batchnorm_train_blocks) normalises each micro-batch alone (differs from one batch).
  c.train.grad_accum_steps = 1
  # Steps between progress/metric syncs with the host (train metrics stay on device between).
  c.train.log_every_steps = 5
  # Evaluate on the validation split every this many epochs (and always after the last).
  c.train.eval_every_epochs = 1
  # Batches prefetched onto the devices ahead of the train step.
  c.train.prefetch_to_device = 2
  # Feature cache (inception/train/feature_cache/): when every backbone param is frozen
  # (optimizer.param_rules multiplier 0), model.batchnorm_train_blocks is empty and augmentation
  # is off, the backbone's cut-layer features are computed once per split (written to
  # <cache>/features/<key>/ as they are computed, read back memory-mapped batch by batch; a
  # 'gap' head caches the pooled features) and the epochs train the head alone on them: same
  # batches, dropout, metrics and checkpoints as without it (to float rounding with a 'gap'
  # head). 'auto': use it whenever valid (the log says whether
  # and why not); 'on': fail at start-up, with the reason, when it is not valid; 'off': never.
  c.train.feature_cache = 'auto'
  # How the feature cache stores features on disk (they are always served to the step as
  # float32; the file is memory-mapped and read batch by batch, so it may exceed the RAM):
  # 'float32' = exactly the backbone's features (training identical to no cache); 'float16' or
  # 'bfloat16' halve the file (a mixed7 image at 299 px: 888 KB -> 444 KB; a 'gap' head caches
  # pooled features, 3 KB) but round every feature, changing the numerics slightly (float16:
  # ~3 significant digits, fails if a feature exceeds 65504; bfloat16: ~2 digits, full range,
  # lossless with model.dtype='bfloat16'). Part of the cache key.
  c.train.feature_cache_dtype = 'float32'

  c.checkpoint = ml_collections.ConfigDict()
  # Also save every this many steps; 0 = only at epoch ends.
  c.checkpoint.every_steps = 0
  # Save at the end of every epoch.
  c.checkpoint.every_epoch = True
  # Checkpoints kept in <workdir>/checkpoints (the newest ones).
  c.checkpoint.keep = 3
  # Keep the best checkpoint by `best_metric` in <workdir>/best (`--checkpoint=best`).
  c.checkpoint.keep_best = True
  # What "best" means, over the validation evaluations: 'accuracy_then_loss' = highest
  # accuracy, ties (the rule on a small validation set: one image is 1/n) broken by the lower
  # loss; 'loss' = lowest validation loss. Complete ties keep the earlier epoch. The rule and
  # the best epoch's metrics are stored in each checkpoint's meta ('best').
  c.checkpoint.best_metric = 'accuracy_then_loss'
  # Save asynchronously (training continues while the files are written).
  c.checkpoint.async_save = True

  c.eval = ml_collections.ConfigDict()
  # Batch size of evaluation and prediction; must divide by the device count.
  c.eval.batch_size = 40
  # Test-time augmentation of `--mode=eval` and `--mode=predict` (may be given there to any run):
  # 'none', or 'flip' (the mean of each image's and its mirror image's class probabilities).
  # Training's own validation and test passes never use it.
  c.eval.tta = 'none'
  return c
