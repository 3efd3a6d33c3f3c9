"""Checking an authorization entry's constraints against a request, at a Resource Server.

PROFILE.md section 6 names the enforcement point of each Common Constraint. An RS-B Resource
Server is stateless, so it evaluates what one request shows:

- ``max_value`` against the parameter the route binds it to (same currency, amount <=);
- allow-lists (``vendors``, ``recipients``, ...) against the parameter the route binds them to;
- ``data_classification`` against the labels of the resource or route;
- ``geo`` against the parameter the route binds it to (an ISO 3166 alpha-2 code).

Everything else refuses (section 4: "Resource Servers and the PDP fail closed on a constraint
key they do not understand"): the metered keys, ``aal`` and ``max_derivations`` are
:data:`CONSTRAINT_UNEVALUABLE` here (counting and step-up belong to the PDP and the AS), and a
key that is neither a Common Constraint nor bound by the route is :data:`CONSTRAINT_UNKNOWN`.
A malformed bound in the token, or a route that binds no parameter to a key that needs one,
is unevaluable too: a constraint is never reduced to "disclosure only".

Pure: no I/O, the same answer for the same input. The bounds are validated with the rules
the Authorization Server issued them under (:mod:`missionbound.mission.constraints`), and money
is compared as :class:`decimal.Decimal` of decimal strings, never as a float.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from missionbound.enforce.rs.request import MISSING, Extractor, RequestFacts
from missionbound.mission.constraint_checks import (
    amount_problem,
    country_problem,
    currency_problem,
    kind_of,
    labels_outside,
    money_excess,
    shown,
)
from missionbound.mission.constraints import ConstraintRegistry

CONSTRAINT_EXCEEDED: Final = "constraint_exceeded"
"""The request is outside the bound (403 ``insufficient_scope``)."""
CONSTRAINT_UNKNOWN: Final = "constraint_unknown"
"""A key this resource does not know: no Common Constraint, not bound by the route (403)."""
CONSTRAINT_UNEVALUABLE: Final = "constraint_unevaluable"
"""A key this resource knows but cannot evaluate here, or a malformed bound (403)."""
PARAMETER_INVALID: Final = "parameter_invalid"
"""The bound parameter is missing or malformed (400 ``invalid_request``)."""
REASONS: Final = frozenset(
    {CONSTRAINT_EXCEEDED, CONSTRAINT_UNKNOWN, CONSTRAINT_UNEVALUABLE, PARAMETER_INVALID})

# The Common Constraints, as the AS validates them. Allow-list keys are registered there with
# the same kind as data_classification (a set of labels), so that kind checks their bounds too.
_COMMON: Final = ConstraintRegistry(frozenset())
_LABEL_SET: Final = _COMMON.kinds["data_classification"]


@dataclass(frozen=True)
class ConstraintRefusal:
    """Why the request is refused: ``reason`` (one of :data:`REASONS`), the constraint
    ``key``, and a ``description`` for ``error_description`` naming the key and the bound."""

    reason: str
    key: str
    description: str


def check_constraints(
    entry: Mapping[str, Any],
    *,
    bindings: Mapping[str, Extractor],
    facts: RequestFacts,
    labels: Sequence[str],
) -> ConstraintRefusal | None:
    """The first refusal of ``entry``'s ``constraints`` for this request, keys taken in sorted
    order so the answer is deterministic; None when every key allows it (or there are none).

    ``bindings`` maps a constraint key to the extractor of the parameter it binds to;
    ``labels`` are the data classification labels of the resource or route."""
    if "constraints" not in entry:
        return None
    constraints = entry["constraints"]
    if not isinstance(constraints, Mapping) or not all(isinstance(k, str) for k in constraints):
        return _unevaluable("constraints", "the Mission's constraints for this action are not "
                            "a JSON object; refused (fail closed)")
    for key in sorted(constraints):
        refusal = _check_key(key, constraints[key], bindings, facts, labels)
        if refusal is not None:
            return refusal
    return None


def _check_key(key: str, bound: Any, bindings: Mapping[str, Extractor], facts: RequestFacts,
               labels: Sequence[str]) -> ConstraintRefusal | None:
    if key == "max_value":
        return _check_max_value(bound, bindings.get(key), facts)
    if key == "geo":
        return _check_geo(bound, bindings.get(key), facts)
    if key == "data_classification":
        return _check_classification(bound, labels)
    if key in ConstraintRegistry.metered:
        return _unevaluable(key, f"{key} is metered across the Mission by its decision point; "
                            "this resource cannot count it, so it refuses (fail closed)")
    if key == "aal":
        return _unevaluable(key, "aal needs a step-up that this resource cannot run; "
                            "refused (fail closed)")
    if key in ConstraintRegistry.context_only:
        return _unevaluable(key, f"{key} bounds the Mission as a whole and is not evaluated "
                            "per request; refused (fail closed)")
    if _COMMON.knows(key):
        # A Common Constraint added to the Mission core without a rule here: fail closed.
        return _unevaluable(key, f"this resource has no rule to evaluate {key}; "
                            "refused (fail closed)")
    binding = bindings.get(key)
    if binding is None:
        # Allow-list keys come from the deployment's catalog; this resource knows one only
        # when the route says which parameter it binds to.
        return ConstraintRefusal(
            CONSTRAINT_UNKNOWN, key,
            f"the Mission bounds this action by a constraint {shown(key)} that this resource "
            "does not know; refused (fail closed)")
    return _check_allow_list(key, bound, binding, facts)


# ---------------------------------------------------------------- max_value


def _check_max_value(bound: Any, binding: Extractor | None,
                     facts: RequestFacts) -> ConstraintRefusal | None:
    key = "max_value"
    if not _COMMON.valid(key, bound):
        return _unevaluable(key, "the Mission's max_value for this action is malformed (not an "
                            "amount as a decimal string and an ISO 4217 currency); refused")
    cap = _COMMON.render(key, bound)
    if binding is None:
        return _unevaluable(key, f"this action is bounded by max_value {cap}, but this resource "
                            "binds no request parameter to max_value")
    value, where = binding.read(facts), binding.describe()
    if value is MISSING:
        return _invalid(key, f"the request does not carry {where}, which max_value {cap} bounds")
    if not isinstance(value, Mapping):
        return _invalid(key, f"{where} must be an amount and a currency, not {kind_of(value)}")
    amount, currency = value.get("amount", MISSING), value.get("currency", MISSING)
    problem = _amount_problem(amount) or _currency_problem(currency)
    if problem is not None:
        return _invalid(key, f"{where}: {problem}")
    excess = money_excess(bound, amount, currency,
                          bound_words=f"the Mission's max_value {cap} for this action")
    return None if excess is None else _exceeded(key, excess)


def _amount_problem(amount: Any) -> str | None:
    return "the amount is missing" if amount is MISSING else amount_problem(amount)


def _currency_problem(currency: Any) -> str | None:
    return "the currency is missing" if currency is MISSING else currency_problem(currency)


# ---------------------------------------------------------------- sets


def _check_allow_list(key: str, bound: Any, binding: Extractor,
                      facts: RequestFacts) -> ConstraintRefusal | None:
    if _LABEL_SET.validate(bound) is not None:
        return _unevaluable(key, f"the Mission's {key} allow-list for this action is malformed "
                            "(not a non-empty array of distinct labels); refused")
    value, where = binding.read(facts), binding.describe()
    if value is MISSING:
        return _invalid(key, f"the request does not carry {where}, which the Mission's {key} "
                        "allow-list bounds")
    if not isinstance(value, str):
        return _invalid(key, f"{where} must be a string, not {kind_of(value)}, for the Mission's "
                        f"{key} allow-list")
    if value not in bound:
        return _exceeded(key, f"{shown(value)} ({where}) is not in the Mission's {key} "
                         "allow-list for this action")
    return None


def _check_geo(bound: Any, binding: Extractor | None,
               facts: RequestFacts) -> ConstraintRefusal | None:
    key = "geo"
    if not _COMMON.valid(key, bound):
        return _unevaluable(key, "the Mission's geo for this action is malformed (not a "
                            "non-empty array of ISO 3166 alpha-2 codes); refused")
    if binding is None:
        return _unevaluable(key, "this action is bounded by geo, but this resource binds no "
                            "request parameter to geo")
    value, where = binding.read(facts), binding.describe()
    if value is MISSING:
        return _invalid(key, f"the request does not carry {where}, which the Mission's geo "
                        "bounds")
    if country_problem(value) is not None:
        return _invalid(key, f"{where} must be an ISO 3166 alpha-2 country code such as US")
    if value not in bound:
        return _exceeded(key, f"country {value} ({where}) is outside the Mission's geo for "
                         "this action")
    return None


def _check_classification(bound: Any, labels: Sequence[str]) -> ConstraintRefusal | None:
    key = "data_classification"
    if not _COMMON.valid(key, bound):
        return _unevaluable(key, "the Mission's data_classification for this action is "
                            "malformed (not a non-empty array of distinct labels); refused")
    if not labels:
        return _unevaluable(key, "this resource declares no data classification labels, so "
                            "the Mission's data_classification cannot be checked here")
    outside = labels_outside(bound, labels)
    if outside:
        return _exceeded(key, f"this resource is labelled {', '.join(outside)}, outside the "
                         "Mission's data_classification for this action")
    return None


# ---------------------------------------------------------------- words


def _exceeded(key: str, description: str) -> ConstraintRefusal:
    return ConstraintRefusal(CONSTRAINT_EXCEEDED, key, description)


def _unevaluable(key: str, description: str) -> ConstraintRefusal:
    return ConstraintRefusal(CONSTRAINT_UNEVALUABLE, key, description)


def _invalid(key: str, description: str) -> ConstraintRefusal:
    return ConstraintRefusal(PARAMETER_INVALID, key, description)

