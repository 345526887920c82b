"""Argument checks shared by every factory: each raises ``ValueError`` naming the argument, the
value it got and what it accepts, before anything is traced or compiled."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value, low: int = 1) -> int:
    """``value`` if it is an int (not a bool) of at least ``low``; else a ``ValueError``.

    Example:
      >>> check_int("maml: inner_steps", 3)
      3
      >>> check_int("maml: inner_steps", 0)
      Traceback (most recent call last):
        ...
      ValueError: maml: inner_steps must be an int >= 1; got 0.
    """
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
    return value


def check_number(name: str, value, *, low: float = 0.0, strict: bool = True,
                 high: float | None = None) -> float:
    """``float(value)`` for a finite number above ``low`` (``>= low`` with ``strict=False``) and,
    with ``high``, below it; else a ``ValueError``.

    Example:
      >>> check_number("imaml: lam", 2)
      2.0
      >>> check_number("imaml: cg_damping", 0.0, strict=False)
      0.0
      >>> check_number("adam: b1", 1.0, strict=False, high=1.0)
      Traceback (most recent call last):
        ...
      ValueError: adam: b1 must be a number in [0.0, 1.0); got 1.0.
    """
    ok = _is_number(value) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and (high is None or value < high)
    if not ok:
        if high is not None:
            bounds = f"in {'(' if strict else '['}{low}, {high})"
        else:
            bounds = f"{'>' if strict else '>='} {low}"
        raise ValueError(f"{name} must be a number {bounds}; got {value!r}.")
    return float(value)


def check_bool(name: str, value) -> bool:
    """``value`` if it is ``True`` or ``False``; else a ``ValueError``.

    Example:
      >>> check_bool("r2d2: bias_column", True)
      True
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}.")
    return value


def check_choice(name: str, value, choices: Sequence[Any]):
    """``value`` if it is one of ``choices``; else a ``ValueError`` listing them.

    Example:
      >>> check_choice("protonets: distance", "cosine", ("sqeuclidean", "cosine"))
      'cosine'
    """
    if value not in tuple(choices):
        raise ValueError(f"{name}: unknown value {value!r}; choose one of {tuple(choices)}.")
    return value


def check_range(name: str, value) -> tuple[float, float]:
    """A number ``v`` as ``(v, v)``, or a ``(low, high)`` pair with ``low <= high``, as floats.

    Example:
      >>> check_range("meta_lstm: forget_bias", (4, 6)), check_range("meta_lstm: forget_bias", 5)
      ((4.0, 6.0), (5.0, 5.0))
    """
    if _is_number(value):
        return float(value), float(value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(_is_number(v) for v in value) or value[0] > value[1]):
        raise ValueError(f"{name} must be a number or a (low, high) range; got {value!r}.")
    return float(value[0]), float(value[1])


def check_rate(name: str, value) -> None:
    """A positive learning rate, or a ``(low, high)`` range of positive rates with ``low <=
    high`` (Meta-SGD draws its rates from one).

    Example:
      >>> check_rate("sgd", 0.1)
      >>> check_rate("meta_sgd", (0.1, 0.01))
      Traceback (most recent call last):
        ...
      ValueError: meta_sgd: the range (low, high) needs low <= high; got (0.1, 0.01).
    """
    values = value if isinstance(value, (tuple, list)) else (value,)
    if len(values) not in (1, 2) or not all(_is_number(v) and v > 0 for v in values):
        raise ValueError(
            f"{name}: the learning rate must be a positive number or a (low, high) range of "
            f"positive numbers; got {value!r}."
        )
    if len(values) == 2 and values[0] > values[1]:
        raise ValueError(f"{name}: the range (low, high) needs low <= high; got {value!r}.")
