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
