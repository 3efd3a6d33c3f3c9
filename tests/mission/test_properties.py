"""Property tests (hypothesis) for the subset rule, canonicalization and the lifecycle."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from missionbound.mission.authority import is_subset
from missionbound.mission.canonical import canonicalize, digest_json, parse_strict
from missionbound.mission.constraints import ConstraintRegistry
from missionbound.mission.errors import ConcurrentModification, InvalidState, TransitionForbidden
from missionbound.mission.lifecycle import (
    EVENT_TARGET,
    TERMINAL_STATES,
    TRANSITIONS,
    Event,
    Role,
    State,
    allowed_roles,
    decide_transition,
)

REG = ConstraintRegistry(frozenset({"vendors"}))
ACTIONS = ["a.read", "b.write", "c.pay", "d.mail"]
VENDORS = ["acme", "globex", "initech", "umbrella"]

amounts = st.decimals(min_value=0, max_value=10_000, places=2).map(str)
constraint_values = {
    "max_value": st.builds(lambda a, c: {"amount": a, "currency": c}, amounts,
                           st.sampled_from(["USD", "EUR"])),
    "max_calls": st.integers(min_value=1, max_value=100),
    "max_duration": st.integers(min_value=1, max_value=100).map(lambda h: f"PT{h}H"),
    "vendors": st.lists(st.sampled_from(VENDORS), min_size=1, unique=True).map(sorted),
    "geo": st.lists(st.sampled_from(["US", "CA", "FR"]), min_size=1, unique=True).map(sorted),
}


@st.composite
def entries(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": "mission_resource_access",
        "resource": draw(st.sampled_from(["https://a.example", "https://b.example"])),
        "actions": sorted(draw(st.lists(st.sampled_from(ACTIONS), min_size=1, unique=True))),
    }
    keys = draw(st.lists(st.sampled_from(sorted(constraint_values)), unique=True))
    if keys:
        entry["constraints"] = {k: draw(constraint_values[k]) for k in keys}
    if draw(st.booleans()):
        delegates = draw(st.lists(st.sampled_from(["x", "y", "z"]), unique=True))
        entry["delegation"] = {"max_depth": draw(st.integers(1, 3)),
                               "allowed_delegates": [{"client_id": d} for d in sorted(delegates)]}
    return entry


@given(entries())
def test_subset_is_reflexive(entry: dict[str, Any]) -> None:
    assert is_subset(entry, entry, REG)


def narrowed(entry: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """A legitimate narrowing of ``entry``: fewer actions, every constraint tightened, maybe
    one constraint added, delegation shallower and to fewer delegates (or removed)."""
    out: dict[str, Any] = {**entry, "actions": sorted(data.draw(
        st.lists(st.sampled_from(entry["actions"]), min_size=1, unique=True)))}
    constraints = dict(entry.get("constraints", {}))
    for key, value in list(constraints.items()):
        if key == "max_value":
            amount = data.draw(st.decimals(min_value=0, max_value=Decimal(value["amount"]),
                                           places=2))
            constraints[key] = {"amount": str(amount), "currency": value["currency"]}
        elif key == "max_calls":
            constraints[key] = data.draw(st.integers(min_value=1, max_value=value))
        elif key == "max_duration":
            hours = int(value[2:-1])
            constraints[key] = f"PT{data.draw(st.integers(min_value=1, max_value=hours))}H"
        else:
            constraints[key] = sorted(data.draw(
                st.lists(st.sampled_from(value), min_size=1, unique=True)))
    extra = data.draw(st.sampled_from(sorted(constraint_values)))
    if extra not in constraints and data.draw(st.booleans()):
        constraints[extra] = data.draw(constraint_values[extra])
    if constraints:
        out["constraints"] = constraints
    delegation = entry.get("delegation")
    if delegation is not None and data.draw(st.booleans()):
        delegates = [m["client_id"] for m in delegation["allowed_delegates"]]
        out["delegation"] = {
            "max_depth": data.draw(st.integers(1, delegation["max_depth"])),
            "allowed_delegates": [{"client_id": d} for d in sorted(data.draw(
                st.lists(st.sampled_from(delegates), unique=True)))] if delegates else [],
        }
    else:
        out.pop("delegation", None)
    return out


@given(entries(), st.data())
def test_every_legitimate_narrowing_is_a_subset(entry: dict[str, Any], data: st.DataObject
                                                ) -> None:
    assert is_subset(narrowed(entry, data), entry, REG)


@given(entries(), st.data())
def test_subset_is_transitive_along_narrowing_chains(entry: dict[str, Any],
                                                     data: st.DataObject) -> None:
    middle = narrowed(entry, data)
    last = narrowed(middle, data)
    assert is_subset(middle, entry, REG) and is_subset(last, middle, REG)
    assert is_subset(last, entry, REG)


@settings(max_examples=300)
@given(entries(), entries(), entries())
def test_subset_is_transitive_on_random_triples(a: dict[str, Any], b: dict[str, Any],
                                                c: dict[str, Any]) -> None:
    if is_subset(a, b, REG) and is_subset(b, c, REG):
        assert is_subset(a, c, REG)


@given(entries(), st.data())
def test_dropping_a_constraint_never_passes(entry: dict[str, Any], data: st.DataObject) -> None:
    if not entry.get("constraints"):
        return
    key = data.draw(st.sampled_from(sorted(entry["constraints"])))
    dropped = {**entry, "constraints": {k: v for k, v in entry["constraints"].items()
                                        if k != key}}
    assert not is_subset(dropped, entry, REG)
    # ... and neither does dropping it from any legitimate narrowing
    narrow = narrowed(entry, data)
    narrow["constraints"] = {k: v for k, v in narrow.get("constraints", {}).items() if k != key}
    assert not is_subset(narrow, entry, REG)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(alphabet=st.characters(blacklist_categories=("Cs",)),
                              max_size=8), children, max_size=5),
    max_leaves=30,
)


def shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


@given(json_values, st.integers(min_value=0, max_value=2**32))
def test_canonicalization_is_stable_under_key_order(value: Any, seed: int) -> None:
    reordered = shuffled(value, random.Random(seed))
    assert canonicalize(reordered) == canonicalize(value)
    assert digest_json(reordered) == digest_json(value)


@given(json_values)
def test_canonical_form_round_trips_through_the_strict_parser(value: Any) -> None:
    text = canonicalize(value)
    assert parse_strict(text, max_size=len(text) + 1, max_depth=64) == value
    assert canonicalize(json.loads(text)) == text


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(list(Event)),
                          st.sets(st.sampled_from(list(Role)), min_size=1)), max_size=25))
def test_every_path_respects_the_terminal_rule(steps: list[tuple[Event, set[Role]]]) -> None:
    state, version = State.PENDING_APPROVAL, 1
    for event, roles in steps:
        permitted = bool(roles & allowed_roles(event))
        try:
            decision = decide_transition(state, version, event, roles)
        except TransitionForbidden:
            assert not permitted
            continue
        except ConcurrentModification:
            # the only 409 here: a terminal Mission asked to become something else
            assert state in TERMINAL_STATES and EVENT_TARGET[event] is not state
            continue
        except InvalidState:
            assert state not in TERMINAL_STATES and (state, event) not in TRANSITIONS
            continue
        assert permitted
        if state in TERMINAL_STATES:
            assert decision.to_state is state and not decision.changed
        assert decision.to_version == version + (1 if decision.changed else 0)
        state, version = decision.to_state, decision.to_version
