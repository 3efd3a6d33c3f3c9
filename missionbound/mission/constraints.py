"""The Common Constraints of PROFILE.md section 6: value checks and subset comparisons.

Each key has one kind. A kind knows how to validate a value, whether a candidate value is
"no broader" than a reference value (the subset rule of section 4), how to meet two values
when the AS clamps a request to a ceiling, and a plain-words rendering for consent.
A key this registry does not know fails closed everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from missionbound.mission.errors import InvalidAuthorizationDetails, MissionError

if TYPE_CHECKING:
    from missionbound.mission.catalog import Catalog

DECIMAL = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]{1,18})?")
CURRENCY = re.compile(r"[A-Z]{3}")
COUNTRY = re.compile(r"[A-Z]{2}")
LABEL = re.compile(r"[A-Za-z0-9_.:/@-]{1,128}")
# ISO 8601 durations with fixed-length units only: years and months have no fixed length, so
# comparing "P1M" with "P30D" would be a guess (refused rather than guessed).
DURATION = re.compile(
    r"P(?:(?P<weeks>[0-9]+)W|(?:(?P<days>[0-9]+)D)?"
    r"(?:T(?:(?P<hours>[0-9]+)H)?(?:(?P<minutes>[0-9]+)M)?(?:(?P<seconds>[0-9]+)S)?)?)"
)


def _fail(where: str, message: str, error: type[MissionError]) -> MissionError:
    return error(f"{where}: {message}")


@dataclass(frozen=True)
class ConstraintKind:
    name: str
    validate: Callable[[Any], str | None]  # returns a problem description or None
    no_broader: Callable[[Any, Any], bool]  # candidate no broader than reference
    render: Callable[[Any], str]
    # For set-valued kinds: a value inside both operands (always exists, possibly empty).
    intersect: Callable[[Any, Any], Any] | None = None


# ---------------------------------------------------------------- money: max_value


def _check_money(value: Any) -> str | None:
    if not isinstance(value, dict) or set(value) != {"amount", "currency"}:
        return 'must be {"amount": "<decimal string>", "currency": "<ISO 4217>"}'
    amount, currency = value["amount"], value["currency"]
    if not isinstance(amount, str) or not DECIMAL.fullmatch(amount):
        return "amount must be a decimal string such as \"500.00\""
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        return "currency must be an ISO 4217 code such as \"USD\""
    return None


def _money_no_broader(candidate: Any, reference: Any) -> bool:
    # Different currencies are incomparable: no conversion, so not a subset.
    return bool(
        candidate["currency"] == reference["currency"]
        and Decimal(candidate["amount"]) <= Decimal(reference["amount"])
    )


def _render_money(value: Any) -> str:
    return f"{value['amount']} {value['currency']}"


# ---------------------------------------------------------------- counts


def _check_count(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return "must be an integer >= 1"
    return None


# ---------------------------------------------------------------- durations


def duration_seconds(value: str) -> int:
    """Seconds in an ISO 8601 duration of weeks, days, hours, minutes and seconds."""
    match = DURATION.fullmatch(value)
    if match is None or value in ("P", "PT") or value.endswith("T"):
        raise ValueError(f"not an ISO 8601 duration of W, D, H, M, S units: {value!r}")
    parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    return (
        parts.get("weeks", 0) * 604800
        + parts.get("days", 0) * 86400
        + parts.get("hours", 0) * 3600
        + parts.get("minutes", 0) * 60
        + parts.get("seconds", 0)
    )


def _check_duration(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be an ISO 8601 duration string such as \"PT8H\""
    try:
        seconds = duration_seconds(value)
    except ValueError as exc:
        return str(exc)
    return None if seconds > 0 else "must be longer than zero"


def _duration_no_broader(candidate: Any, reference: Any) -> bool:
    return duration_seconds(candidate) <= duration_seconds(reference)


# ---------------------------------------------------------------- label sets


def _label_set_checker(pattern: re.Pattern[str], what: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not isinstance(value, list) or not value:
            return f"must be a non-empty array of {what}"
        if not all(isinstance(v, str) and pattern.fullmatch(v) for v in value):
            return f"must be an array of {what}"
        if len(set(value)) != len(value):
            return "must not repeat a value"
        return None

    return check


def _set_no_broader(candidate: Any, reference: Any) -> bool:
    return set(candidate) <= set(reference)


def _set_intersection(a: Any, b: Any) -> Any:
    # The intersection may be empty: an empty allow-list allows nothing, which is narrow.
    return sorted(set(a) & set(b))


def _render_set(value: Any) -> str:
    return ", ".join(value)


# ---------------------------------------------------------------- aal


def _check_aal_shape(value: Any) -> str | None:
    if not isinstance(value, dict) or set(value) - {"value", "freshness_seconds"}:
        return 'must be {"value": "<acr>", "freshness_seconds": n}'
    if not isinstance(value.get("value"), str) or not value["value"]:
        return "value must be a non-empty acr string"
    fresh = value.get("freshness_seconds")
    if fresh is not None and (isinstance(fresh, bool) or not isinstance(fresh, int) or fresh < 0):
        return "freshness_seconds must be an integer >= 0"
    return None


class ConstraintRegistry:
    """The constraint keys a deployment understands, built from its catalog."""

    # Keys that only make sense Mission-wide, in mission_intent.context.
    context_only = frozenset({"max_derivations"})
    # Keys counted across the whole Mission by the PDP's metering: never copied into entries,
    # because a per-entry copy would change their meaning from a Mission budget to many.
    metered = frozenset({"max_calls", "max_total_value", "max_duration"})

    def __init__(self, allow_list_keys: frozenset[str], acr_order: tuple[str, ...] = ()) -> None:
        self._acr_rank = {acr: i for i, acr in enumerate(acr_order)}
        count = ConstraintKind("count", _check_count, lambda c, r: c <= r, str)
        money = ConstraintKind("money", _check_money, _money_no_broader, _render_money)
        labels = ConstraintKind("labels", _label_set_checker(LABEL, "labels"), _set_no_broader,
                                _render_set, _set_intersection)
        self.kinds: dict[str, ConstraintKind] = {
            "max_value": money,
            "max_total_value": money,
            "max_calls": count,
            "max_derivations": count,
            "max_duration": ConstraintKind("duration", _check_duration, _duration_no_broader,
                                           str),
            "data_classification": labels,
            "geo": ConstraintKind("geo", _label_set_checker(COUNTRY, "ISO 3166 alpha-2 codes"),
                                  _set_no_broader, _render_set, _set_intersection),
            "aal": ConstraintKind("aal", self._check_aal, self._aal_no_broader,
                                  self._render_aal),
        }
        for key in allow_list_keys:
            if key in self.kinds:
                raise ValueError(f"allow-list key {key!r} clashes with a Common Constraint")
            self.kinds[key] = labels

    @classmethod
    def for_catalog(cls, catalog: Catalog) -> ConstraintRegistry:
        return cls(catalog.allow_list_keys, catalog.acr_order)

    def knows(self, key: str) -> bool:
        return key in self.kinds

    def validate(
        self,
        key: str,
        value: Any,
        *,
        where: str,
        error: type[MissionError] = InvalidAuthorizationDetails,
    ) -> None:
        kind = self.kinds.get(key)
        if kind is None:
            raise _fail(where, f"unknown constraint key {key!r} (refused: fail closed)", error)
        problem = kind.validate(value)
        if problem:
            raise _fail(where, f"constraint {key!r} {problem}", error)

    def no_broader(self, key: str, candidate: Any, reference: Any) -> bool:
        """Section 6 comparison; an unknown key is never a subset (fail closed)."""
        kind = self.kinds.get(key)
        if kind is None or kind.validate(candidate) or kind.validate(reference):
            return False
        return kind.no_broader(candidate, reference)

    def narrower(self, key: str, a: Any, b: Any) -> Any | None:
        """A value no broader than both ``a`` and ``b``, or None when there is none to be had
        (money in two currencies, acr values with no declared order): the caller refuses."""
        kind = self.kinds[key]
        if kind.intersect is not None:
            return kind.intersect(a, b)
        if kind.no_broader(a, b):
            return a
        if kind.no_broader(b, a):
            return b
        return None

    def normalize(self, key: str, value: Any) -> Any:
        """Fixed order for hashing: arrays of labels are emitted sorted."""
        if self.kinds[key].intersect is not None:
            return sorted(value)
        return value

    def render(self, key: str, value: Any) -> str:
        return self.kinds[key].render(value)

    def _check_aal(self, value: Any) -> str | None:
        problem = _check_aal_shape(value)
        if problem is None and self._acr_rank and value["value"] not in self._acr_rank:
            # With a declared order, an acr outside it could never be compared later.
            return f"value must be one of the deployment's acr values {list(self._acr_rank)}"
        return problem

    def valid(self, key: str, value: Any) -> bool:
        kind = self.kinds.get(key)
        return kind is not None and kind.validate(value) is None

    # -- aal: "stricter" means an acr at least as strong and a freshness at least as tight.
    def _aal_no_broader(self, candidate: Any, reference: Any) -> bool:
        c_acr, r_acr = candidate["value"], reference["value"]
        if c_acr != r_acr:
            if c_acr not in self._acr_rank or r_acr not in self._acr_rank:
                return False  # no declared ordering: only equality is comparable
            if self._acr_rank[c_acr] < self._acr_rank[r_acr]:
                return False
        r_fresh = reference.get("freshness_seconds")
        c_fresh = candidate.get("freshness_seconds")
        if r_fresh is None:
            return True
        return c_fresh is not None and c_fresh <= r_fresh

    @staticmethod
    def _render_aal(value: Any) -> str:
        fresh = value.get("freshness_seconds")
        text = f"sign-in at level {value['value']}"
        return text + (f", no older than {fresh} s" if fresh is not None else "")


def constraints_no_broader(
    registry: ConstraintRegistry, candidate: Mapping[str, Any], reference: Mapping[str, Any]
) -> bool:
    """Every key of ``reference`` present in ``candidate`` and no broader; keys the candidate
    adds must be understood (a dropped key is the broadest value and fails)."""
    for key, ref_value in reference.items():
        if key not in candidate or not registry.no_broader(key, candidate[key], ref_value):
            return False
    # Keys shared with the reference were validated by no_broader; check only the added ones.
    return all(registry.valid(key, value) for key, value in candidate.items()
               if key not in reference)
