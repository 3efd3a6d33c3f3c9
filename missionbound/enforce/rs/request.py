"""What a Resource Server reads from a request to check a Mission's constraints.

PROFILE.md section 6: "The catalog declares which keys each action accepts and which request
parameter each key binds to". At the Resource Server the route does the binding: it names, per
constraint key, an :class:`Extractor` (``json_field("amount")``, ``path_param("vendor")``,
``money(json_field("amount"), json_field("currency"))``) that reads the value from
:class:`RequestFacts`, the framework-free view of the request the guard builds.

An extractor never raises on odd input: a value of the wrong shape is returned as it is, for
:mod:`missionbound.enforce.rs.constraints` to refuse with words a client developer can act
on, and a value that is not there is :data:`MISSING`.

The body is parsed strictly (:func:`parse_json_body`), for the reason
:mod:`missionbound.mission.canonical` gives: two readers must never disagree about what was
sent, so a member named twice is refused rather than read as its last value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Protocol

from missionbound.mission.canonical import parse_strict
from missionbound.mission.errors import InvalidRequest

# Deeper than any request a constraint reads from; bounds the work of the checks below.
MAX_JSON_DEPTH: Final = 32
# I-JSON (RFC 7493 section 2.2) integers have at most 16 digits; refusing longer ones before
# int() sees them keeps a many-digit integer from costing quadratic time.
_MAX_INTEGER_DIGITS: Final = 16
_WHAT = "the request body"


class _Missing(Enum):
    # An enum member stays itself through copy, deepcopy and pickle, so ``is MISSING`` holds
    # for a copied RequestFacts as well; a plain object() would not.
    MISSING = "MISSING"

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing.MISSING
"""The parameter is absent (distinct from a JSON ``null``, which is a value of the wrong
shape)."""


@dataclass(frozen=True)
class RequestFacts:
    """The parts of a request constraints are read from. ``query`` and ``headers`` (lower-case
    names) map each name to its value, or to the list of its values when it was sent more
    than once (which no constraint accepts); ``json_body`` is the strictly parsed body
    (:func:`parse_json_body`), or :data:`MISSING` when the body was not read or was empty."""

    method: str
    path: str
    path_params: Mapping[str, Any] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    json_body: Any = MISSING


class Extractor(Protocol):
    """Reads the request parameter a constraint key is bound to."""

    @property
    def needs_json_body(self) -> bool:
        """True when :meth:`read` looks at ``json_body``: the guard reads the body only then."""
        ...

    def read(self, facts: RequestFacts) -> Any:
        """The value as the request carries it (any shape), or :data:`MISSING`. Never raises."""
        ...

    def describe(self) -> str:
        """Where the value is read from, for error descriptions: ``JSON member 'amount'``."""
        ...


@dataclass(frozen=True)
class JsonField:
    """A member of the JSON body: string steps are member names, integer steps array
    indexes (a string never indexes an array, an integer never names a member)."""

    path: tuple[str | int, ...]

    @property
    def needs_json_body(self) -> bool:
        return True

    def read(self, facts: RequestFacts) -> Any:
        node = facts.json_body
        for step in self.path:
            if isinstance(step, str) and isinstance(node, dict):
                node = node.get(step, MISSING)
            elif isinstance(step, int) and isinstance(node, list) and step < len(node):
                node = node[step]
            else:
                return MISSING
            if node is MISSING:
                return MISSING
        return node

    def describe(self) -> str:
        text = ""
        for step in self.path:
            text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
        return f"JSON member {text!r}"


@dataclass(frozen=True)
class PathParam:
    name: str

    @property
    def needs_json_body(self) -> bool:
        return False

    def read(self, facts: RequestFacts) -> Any:
        return facts.path_params.get(self.name, MISSING)

    def describe(self) -> str:
        return f"path parameter {self.name!r}"


@dataclass(frozen=True)
class QueryParam:
    name: str

    @property
    def needs_json_body(self) -> bool:
        return False

    def read(self, facts: RequestFacts) -> Any:
        return facts.query.get(self.name, MISSING)

    def describe(self) -> str:
        return f"query parameter {self.name!r}"


@dataclass(frozen=True)
class Header:
    name: str  # lower case, as RequestFacts.headers keys are (field names are case-insensitive)

    @property
    def needs_json_body(self) -> bool:
        return False

    def read(self, facts: RequestFacts) -> Any:
        return facts.headers.get(self.name, MISSING)

    def describe(self) -> str:
        return f"header {self.name!r}"


@dataclass(frozen=True)
class Money:
    """A ``max_value``-shaped value (PROFILE.md section 6) from two parameters. Read as
    ``{"amount": ..., "currency": ...}`` with each part as the request carries it (possibly
    :data:`MISSING`), so the evaluator can say which part is wrong; :data:`MISSING` only
    when both are absent."""

    amount: Extractor
    currency: Extractor

    @property
    def needs_json_body(self) -> bool:
        return self.amount.needs_json_body or self.currency.needs_json_body

    def read(self, facts: RequestFacts) -> Any:
        amount, currency = self.amount.read(facts), self.currency.read(facts)
        if amount is MISSING and currency is MISSING:
            return MISSING
        return {"amount": amount, "currency": currency}

    def describe(self) -> str:
        return (f"the amount ({self.amount.describe()}) "
                f"and currency ({self.currency.describe()})")


def json_field(*path: str | int) -> Extractor:
    """``json_field("amount")``, ``json_field("payee", "vendor")``, ``json_field("lines", 0,
    "amount")``. A bad path is a programming error of the route, refused at once."""
    if not path:
        raise ValueError("json_field needs at least one step")
    for step in path:
        if isinstance(step, bool) or not isinstance(step, (str, int)):
            raise ValueError(f"json_field steps are member names or indexes, not {step!r}")
        if isinstance(step, int) and step < 0:
            raise ValueError(f"json_field index {step} is negative")
    return JsonField(tuple(path))


def path_param(name: str) -> Extractor:
    return PathParam(name)


def query_param(name: str) -> Extractor:
    return QueryParam(name)


def header(name: str) -> Extractor:
    return Header(name.lower())


def money(amount: Extractor, currency: Extractor) -> Extractor:
    return Money(amount, currency)


# ---------------------------------------------------------------- the body


def parse_json_body(raw: bytes) -> Any:
    """The JSON object or array ``raw`` holds, or :data:`MISSING` for an empty body.

    Raises :class:`~missionbound.mission.errors.InvalidRequest` naming the problem for
    invalid UTF-8, text that is not JSON, a top-level value that is not an object or array,
    a member name twice in one object, ``NaN``/``Infinity``, lone surrogates or integers
    beyond 2^53 (I-JSON, RFC 7493), and nesting deeper than :data:`MAX_JSON_DEPTH`.
    Floats are JSON and are read (a body may carry measurements); a constraint that needs a
    decimal still refuses one, since decimals travel as strings (PROFILE.md section 3).
    The guard bounds the size before it reads the body.

    It is :func:`~missionbound.mission.canonical.parse_strict` with floats allowed.
    """
    if not raw:
        return MISSING
    # The guard bounded the size before reading; parse_strict's own limit is not the check.
    value = parse_strict(raw, max_size=len(raw), what=_WHAT, max_depth=MAX_JSON_DEPTH,
                         allow_floats=True)
    if not isinstance(value, (dict, list)):
        raise InvalidRequest(f"{_WHAT} must be a JSON object or array")
    return value
