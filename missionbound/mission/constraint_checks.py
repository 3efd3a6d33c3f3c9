"""Per-key runtime checks of the Common Constraints (PROFILE.md section 6, runtime-digest
section 7.1): is this request value within this bound?

Shared by the two evaluators of the same keys: a Resource Server's
(``enforce/rs/constraints.py``, values read from an HTTP request) and the PDP's
(``runtime/decision.py``, values read from AuthZEN ``action.properties.parameters``). Each
check answers with the words of the problem, or None when the value is within the bound; the
caller decides which wire reason that becomes. Money is compared as exact
:class:`decimal.Decimal` of decimal strings, never as a float, and never across currencies.

Pure: no I/O. Callers validate the bound first (``ConstraintRegistry.valid``): a malformed
bound is the caller's fail-closed case, not a comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from missionbound.mission.constraints import COUNTRY, CURRENCY, DECIMAL

SHOWN_LENGTH: Final = 64


def shown(text: str) -> str:
    """A request value quoted back in a description, kept short."""
    return text if len(text) <= SHOWN_LENGTH else text[:SHOWN_LENGTH] + "..."


def kind_of(value: Any) -> str:
    """The JSON kind of ``value`` in words, for "must be X, not Y" descriptions."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------- money


def amount_problem(amount: Any) -> str | None:
    """Why ``amount`` (present) is not a decimal string, or None."""
    if not isinstance(amount, str):
        return (f"the amount must be a decimal string such as 500.00, not {kind_of(amount)} "
                "(decimals travel as strings)")
    if not DECIMAL.fullmatch(amount):
        return f"the amount {shown(amount)} is not a decimal string such as 500.00"
    return None


def currency_problem(currency: Any) -> str | None:
    """Why ``currency`` (present) is not an ISO 4217 code, or None."""
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        return "the currency must be an ISO 4217 code such as USD"
    return None


def money_excess(bound: Mapping[str, str], amount: str, currency: str, *,
                 bound_words: str) -> str | None:
    """Why a well-formed ``amount`` ``currency`` is above the money ``bound`` (another
    currency is incomparable: no conversion), or None when within it (equal is within).
    ``bound_words`` names the bound in the description ("the Mission's max_value 500.00 USD
    for this action")."""
    if currency != bound["currency"]:
        return (f"amount {shown(amount)} {currency} is not in the currency of {bound_words} "
                "(no currency conversion)")
    if Decimal(amount) > Decimal(bound["amount"]):
        return f"amount {shown(amount)} {currency} exceeds {bound_words}"
    return None


# ---------------------------------------------------------------- sets


def allow_list_excess(key: str, bound: Sequence[str], value: Any) -> str | None:
    """Why ``value`` (a string, or an array of strings where every member must be allowed)
    is outside the ``key`` allow-list, or a shape problem; None when allowed."""
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(item, str) for item in values):
        return f"the value for {key} must be a string or an array of strings, not {kind_of(value)}"
    outside = [item for item in values if item not in bound]
    if outside:
        return f"{shown(outside[0])} is not in the Mission's {key} allow-list"
    return None


def country_problem(value: Any) -> str | None:
    if not isinstance(value, str) or not COUNTRY.fullmatch(value):
        return "the country must be an ISO 3166 alpha-2 code such as US"
    return None


def labels_outside(bound: Sequence[str], labels: Sequence[str]) -> list[str]:
    """The labels (deduplicated, in order) not allowed by a ``data_classification`` bound."""
    return [label for label in dict.fromkeys(labels) if label not in bound]
