"""Config value checks shared by the modules that own a config section; each raises ValueError
naming the key (`config.<key>`), the value and what is valid.

A leaf: it imports nothing of the project, so that `data` (its `config.data` section) may use it
too (with `inception.paths`, the one layer below both; tests/test_architecture.py)."""

from __future__ import annotations

from typing import Any


def choice(key: str, value: Any, choices) -> None:
  if value not in choices:
    raise ValueError(f'config.{key}={value!r} is not valid; valid: '
                     f'{", ".join(map(str, choices))}')


def number(key: str, value: Any, *, lo=None, hi=None, integer=False, lo_open=False,
           hi_open=False) -> None:
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind):
    raise ValueError(f'config.{key}={value!r} must be {"an integer" if integer else "a number"}')
  if value != value:
    raise ValueError(f'config.{key} is NaN')
  bad = ((lo is not None and (value <= lo if lo_open else value < lo)) or
         (hi is not None and (value >= hi if hi_open else value > hi)))
  if bad:
    lb = '(' if lo_open else '['
    rb = ')' if hi_open else ']'
    raise ValueError(f'config.{key}={value!r} must be in {lb}{lo}, {hi}{rb}')


def boolean(key: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise ValueError(f'config.{key}={value!r} must be True or False')
