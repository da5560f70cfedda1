"""Shared helpers for parameterised configs (`--config configs/x.py:k=v,k=v`, big_vision style)."""

from __future__ import annotations

from typing import Any

import ml_collections


def convert(key: str, text: str, default: Any) -> Any:
  """`text` of config arg `key` as the type of its `default` (bool, int, float or str)."""
  if isinstance(default, bool):
    low = text.strip().lower()
    if low in ('1', 'true', 'yes', 'on'):
      return True
    if low in ('0', 'false', 'no', 'off'):
      return False
    raise ValueError(f'Config arg {key}={text!r}: expected a boolean (true/false)')
  if isinstance(default, (int, float)):
    try:
      return type(default)(text)
    except ValueError:
      raise ValueError(f'Config arg {key}={text!r}: expected {type(default).__name__}') from None
  return text


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses 'k=v,k=v' into a ConfigDict typed like `defaults` (which also lists valid keys).

  ValueError names an unknown key (with the valid ones) or a value of the wrong type.
  """
  out = ml_collections.ConfigDict(defaults)
  if not arg:
    return out
  for item in arg.split(','):
    if not item.strip():
      continue
    if '=' not in item:
      raise ValueError(f'Config arg {item!r} must be key=value; valid keys: '
                       f'{", ".join(sorted(defaults))}')
    key, text = item.split('=', 1)
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'Unknown config arg {key!r}; valid keys: {", ".join(sorted(defaults))}')
    out[key] = convert(key, text, defaults[key])
  return out


def arg_slug(arg: str | None) -> str:
  """Filesystem-friendly slug of a config arg ('cut=mixed6,seed=1' -> 'cut-mixed6_seed-1')."""
  if not arg:
    return ''
  keep = []
  for ch in arg.replace('=', '-').replace(',', '_'):
    keep.append(ch if ch.isalnum() or ch in '-_.' else '-')
  return ''.join(keep)
