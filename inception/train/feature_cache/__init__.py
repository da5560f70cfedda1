"""Feature caching: with a frozen backbone and no augmentation, run the backbone once per split.

When every backbone param is frozen (`optimizer.param_rules` multiplier 0), no backbone
BatchNorm trains (`model.batchnorm_train_blocks` empty) and augmentation is the identity, the
backbone maps each image to the same cut-layer features in every epoch. The run's batches then
come from `source.CachedFeatures` instead of the image files: features computed once per split
(jitted backbone forward, in manifest order), streamed to disk, and served in exactly the order
of `data.pipeline.train_batches`. The head trains on them with the same jitted step
(`transfer.HeadOnly`): same masked optimizer, dropout keys and full-params train state, so
checkpoints are the same as without the cache.

By role:
  policy  whether a run may use the cache (`train.feature_cache`: auto | on | off);
  key     what the features depend on, hashed into the folder name;
  store   the on-disk form: encoding, a streaming .npy writer, verified read-only mappings;
  source  the run's batches from the store, computed first (collectively) when missing.
"""
