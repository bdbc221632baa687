"""Checks for the per-artifact option objects of a job (``options.parallax``, ``options.mesh``).

Raise ``ValueError`` with a message fit for a client: the API turns it into ``400
invalid_options``, the CLI into a usage error.
"""

from __future__ import annotations

from collections.abc import Mapping


def option_object(raw: object, what: str, keys: tuple[str, ...]) -> Mapping[str, object]:
    """``raw`` (None: empty) as a mapping holding only ``keys``."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) - set(keys):
        raise ValueError(f"options.{what} must be an object with at most the keys {list(keys)}")
    return raw


def number(values: Mapping[str, object], key: str, default: float, low: float, high: float,
           what: str, whole: bool = False) -> float:
    """``values[key]`` (or ``default``) checked to be a number (whole, if asked) in low..high."""
    value = values.get(key, default)
    kinds = (int,) if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        span = f"a whole number {int(low):,}..{int(high):,}" if whole else f"a number {low:g}..{high:g}"
        raise ValueError(f"options.{what}.{key} must be {span}")
    return value
