"""Ordered regex rules over parameter paths -> lr multipliers, optimizer labels, masks.

A rule list is big_vision style: `((regex, multiplier), ...)`, matched with `re.search` against
the '/'-joined path of every parameter leaf (e.g. 'backbone/mixed7/branch1x1/conv/kernel',
'head/dense/kernel'). The FIRST matching rule wins. Multiplier 0.0 means frozen: the leaf gets
no gradient, no optimizer state and is never written. Every leaf must match some rule.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from flax import traverse_util

FROZEN = 'frozen'
Rules = Sequence[tuple[str, float]]


def path_str(path: tuple[str, ...]) -> str:
  return '/'.join(str(p) for p in path)


def flat_paths(tree: Any) -> dict[str, Any]:
  """{'/'-joined path: leaf} of a nested dict, in the tree's order."""
  return {path_str(k): v for k, v in traverse_util.flatten_dict(tree).items()}


def check_rules(rules: Rules, key: str = 'optimizer.param_rules') -> list[tuple[re.Pattern, float]]:
  """Compiles `rules`; ValueError naming `key` and the bad rule when one is malformed."""
  compiled = []
  for i, rule in enumerate(rules):
    if not isinstance(rule, (tuple, list)) or len(rule) != 2:
      raise ValueError(f'{key}[{i}]={rule!r} must be a (regex, lr multiplier) pair')
    pattern, mult = rule
    try:
      regex = re.compile(pattern)
    except (re.error, TypeError) as e:
      raise ValueError(f'{key}[{i}]: bad regex {pattern!r}: {e}') from None
    if not isinstance(mult, (int, float)) or isinstance(mult, bool) or mult < 0 or mult != mult:
      raise ValueError(f'{key}[{i}]: lr multiplier must be a number >= 0, got {mult!r}')
    compiled.append((regex, float(mult)))
  return compiled


def multipliers(params: Any, rules: Rules) -> Any:
  """Tree like `params` with the float lr multiplier of each leaf (first matching rule)."""
  compiled = check_rules(rules)
  flat = traverse_util.flatten_dict(params)
  out = {}
  for path in flat:
    name = path_str(path)
    for regex, mult in compiled:
      if regex.search(name):
        out[path] = mult
        break
    else:
      raise ValueError(f'Parameter {name!r} matches no rule in optimizer.param_rules '
                       f'{[r for r, _ in rules]}; end the list with a catch-all (".*", 1.0).')
  return traverse_util.unflatten_dict(out)


def label_for(mult: float) -> str:
  return FROZEN if mult == 0.0 else f'lr_x{float(mult)!r}'


def labels(params: Any, rules: Rules) -> Any:
  """Tree like `params` of optimizer labels: 'frozen' or 'lr_x<multiplier>'."""
  import jax
  return jax.tree.map(label_for, multipliers(params, rules))


def trainable_mask(params: Any, rules: Rules) -> Any:
  """Tree like `params` of bools: True where the leaf is trained (multiplier > 0)."""
  import jax
  return jax.tree.map(lambda m: m > 0.0, multipliers(params, rules))


def split(tree: Any, mask: Any) -> tuple[dict, dict]:
  """(trainable, frozen) nested dicts holding the leaves where `mask` is True / False."""
  flat = traverse_util.flatten_dict(tree)
  flat_mask = traverse_util.flatten_dict(mask)
  if flat.keys() != flat_mask.keys():
    raise ValueError('split: the mask does not have the structure of the tree')
  train = {k: v for k, v in flat.items() if flat_mask[k]}
  frozen = {k: v for k, v in flat.items() if not flat_mask[k]}
  return traverse_util.unflatten_dict(train), traverse_util.unflatten_dict(frozen)


def merge(*trees: dict) -> dict:
  """Union of disjoint nested dicts (inverse of `split`)."""
  flat = {}
  for t in trees:
    for k, v in traverse_util.flatten_dict(t).items():
      if k in flat:
        raise ValueError(f'merge: {path_str(k)} is in more than one tree')
      flat[k] = v
  return traverse_util.unflatten_dict(flat)


def summary(params: Any, rules: Rules) -> dict[str, int]:
  """Number of parameter scalars per label, e.g. {'frozen': 8975264, 'lr_x1.0': 38536193}."""
  import jax
  import numpy as np
  counts: dict[str, int] = {}
  for lab, leaf in zip(jax.tree.leaves(labels(params, rules)), jax.tree.leaves(params)):
    counts[lab] = counts.get(lab, 0) + int(np.prod(np.shape(leaf)))
  return counts
