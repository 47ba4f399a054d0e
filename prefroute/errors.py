"""Errors that say exactly what is wrong with the user's input."""

from __future__ import annotations

import math
import numbers


class PrefrouteError(Exception):
    """Base class: a known failure with a message written for the user."""


class DataError(PrefrouteError, ValueError):
    """Bad input data; the message names the file, the row and the field."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file, self.row, self.field = file, row, field
        where = []
        if file is not None:
            where.append(f"file {file}")
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + message)


class CheckpointError(PrefrouteError, ValueError):
    """A checkpoint folder that is missing, corrupted or does not match what loads it."""


class TrainingError(PrefrouteError):
    """Training produced an unusable model (e.g. NaN or infinite parameters)."""


class ConfigError(PrefrouteError, ValueError):
    """An invalid parameter value; the message says which and what is allowed."""


def check_choice(name: str, owner: str, value: object, allowed: tuple) -> None:
    """Raise ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be one of {list(allowed)}. "
            f"Got {value!r} instead."
        )


def check_int(
    name: str, owner: str, value: object, *, low: int = 1, optional: bool = False,
    high: int | None = None,
) -> None:
    """Raise ConfigError unless ``value`` is an int in [``low``, ``high``] (or None, when
    ``optional``)."""
    if optional and value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low
            or (high is not None and value > high)):
        none = " or None" if optional else ""
        bound = f"an int >= {low}" if high is None else f"an int from {low} to {high:,}"
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be {bound}{none}. Got {value!r} instead."
        )


def check_range(
    name: str,
    owner: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> None:
    """Raise ConfigError unless ``value`` lies in the given interval. An open side means any
    finite number: no setting is meaningful at infinity (a price, a rate, a learning rate),
    and NaN fails every comparison."""
    ok = value == value and abs(value) != math.inf
    if low is not None:
        ok &= value >= low if low_inclusive else value > low
    if high is not None:
        ok &= value <= high if high_inclusive else value < high
    if not ok:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        lb = "(" if low is None or not low_inclusive else "["
        hb = ")" if high is None or not high_inclusive else "]"
        raise ConfigError(
            f"The '{name}' parameter of {owner} must be in {lb}{lo}, {hi}{hb}. "
            f"Got {value!r} instead."
        )
