"""The cache key: everything the cached features depend on, hashed into their folder's name."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from inception.train.feature_cache import store

FORMAT_VERSION = 3  # Bump when the features a key names change (e.g. the backbone's code).


def is_pooled(config: Any) -> bool:
  """Whether the cache holds globally pooled features [N, C] (the 'gap' head pools first)."""
  return config.model.head == 'gap'


def ingredients(config: Any, provenance: dict, manifest_sha256: str,
                backbone_sha256: str) -> dict:
  """Everything the cached features depend on (JSON-able): backbone weights provenance and
  content hash, cut, image size, resize method, preprocessing, model dtype, pooling, storage
  dtype, and the manifest's sha256 (which lists every file in order with its own sha256)."""
  d, m = config.data, config.model
  return {
      'format': FORMAT_VERSION,
      'backbone': m.backbone,
      'weights': {k: provenance.get(k) for k in ('weights', 'sha256', 'variant')},
      'backbone_sha256': backbone_sha256,  # Covers random inits (seed) and checkpoints too.
      'cut': m.cut, 'image_size': int(d.image_size), 'resize_method': d.resize_method,
      'preprocess': d.preprocess, 'dtype': m.dtype, 'manifest_sha256': manifest_sha256,
      'pooled': is_pooled(config), 'storage_dtype': store.storage_dtype(config.train),
  }


def digest(key_ingredients: dict) -> str:
  """The key: sha256 hex of `ingredients(...)`'s canonical JSON."""
  blob = json.dumps(key_ingredients, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(blob.encode()).hexdigest()
