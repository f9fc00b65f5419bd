"""Shared by the widgets' trait validators: run a check, report its error as a ``TraitError``."""

from __future__ import annotations

from typing import Any, Callable

import traitlets


def checked(proposal: dict, check: Callable[[Any], Any]) -> Any:
    """``check(proposal["value"])``, with a ``TypeError``/``ValueError`` turned into a ``TraitError``
    carrying the same message (what ``@traitlets.validate`` must raise)."""
    try:
        return check(proposal["value"])
    except (TypeError, ValueError) as error:
        raise traitlets.TraitError(str(error)) from None


def checked_int(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) in ``minimum..maximum``; else TypeError / ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name} must be an int {bounds}, got {value}")
    return value
