"""The pure delegation rules (missionbound.mission.delegation): the act chain and the
per-entry filter of issuance digest 6.8."""

from __future__ import annotations

from typing import Any

import pytest

from missionbound.mission.delegation import (
    MAX_CHAIN_LENGTH,
    Actor,
    Exclusion,
    InvalidActorChain,
    actor_chain,
    delegable_entries,
    with_actor,
)

AS = "https://as.example"


def entry(actions: list[str], delegation: dict[str, Any] | None = None) -> dict[str, Any]:
    made: dict[str, Any] = {"type": "mission_resource_access",
                            "resource": "https://erp.example", "actions": actions}
    if delegation is not None:
        made["delegation"] = delegation
    return made


def to(*client_ids: str, depth: int = 1) -> dict[str, Any]:
    return {"max_depth": depth,
            "allowed_delegates": [{"client_id": cid} for cid in client_ids]}


def test_no_act_is_depth_zero_and_nesting_puts_the_delegate_outermost() -> None:
    assert actor_chain(None) == ()
    first = with_actor(None, Actor("sub-agent", AS))
    second = with_actor(first, Actor("tool-runner", AS))
    assert second == {"sub": "tool-runner", "iss": AS,
                      "act": {"sub": "sub-agent", "iss": AS}}
    assert actor_chain(second) == (Actor("tool-runner", AS), Actor("sub-agent", AS))
    # The new claim never shares a dict with the one it nests.
    second["act"]["sub"] = "changed"
    assert first["sub"] == "sub-agent"


@pytest.mark.parametrize("act", [
    "sub-agent", {"sub": "a"}, {"sub": "", "iss": AS}, {"sub": "a", "iss": AS, "x": 1},
    {"sub": "a", "iss": AS, "act": {"sub": 3, "iss": AS}}, [], {"sub": "a", "iss": None},
])
def test_a_malformed_chain_is_refused(act: Any) -> None:
    with pytest.raises(InvalidActorChain):
        actor_chain(act)
    with pytest.raises(InvalidActorChain):
        with_actor(act, Actor("b", AS))


def test_a_chain_deeper_than_the_bound_is_refused() -> None:
    act: dict[str, Any] | None = None
    for i in range(MAX_CHAIN_LENGTH + 1):
        act = {"sub": f"a{i}", "iss": AS, **({"act": act} if act else {})}
    with pytest.raises(InvalidActorChain, match="longer"):
        actor_chain(act)


def test_the_filter_keeps_only_what_names_the_delegate_within_depth() -> None:
    readable = entry(["invoices.read"], to("sub-agent", "tool-runner", depth=2))
    shallow = entry(["list_invoices"], to("sub-agent"))
    private = entry(["journal-entries.write"])
    others = entry(["get_invoice"], to("someone-else", depth=3))
    unlisted = entry(["reports.read"], {"max_depth": 3})
    entries = [readable, shallow, private, others, unlisted]

    first = delegable_entries(entries, delegate_client_id="sub-agent", depth=1)
    assert first.kept == [readable, shallow]
    assert dict((e["actions"][0], r) for e, r in first.excluded) == {
        "journal-entries.write": Exclusion.NOT_DELEGABLE,
        "get_invoice": Exclusion.DELEGATE_NOT_ALLOWED,
        # No allowed_delegates: nobody (decision X3), never a blank cheque.
        "reports.read": Exclusion.DELEGATE_NOT_ALLOWED,
    }
    second = delegable_entries(entries, delegate_client_id="sub-agent", depth=2)
    assert second.kept == [readable]
    third = delegable_entries(entries, delegate_client_id="sub-agent", depth=3)
    assert third.kept == [] and third.only_depth_stopped


def test_nothing_for_a_stranger_is_not_a_depth_problem() -> None:
    result = delegable_entries([entry(["a"], to("x"))], delegate_client_id="y", depth=1)
    assert result.kept == [] and not result.only_depth_stopped
