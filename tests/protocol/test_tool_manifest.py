"""Tool-manifest binding, the pure part (missionbound/protocol/tool_manifest.py): the digest of
one tool's definition (runtime-digest 5.8's verified vector), per-tool extraction (another
tool changing never drifts this one), and ``context.capability_source`` on the wire."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from missionbound.protocol.tool_manifest import (
    CapabilitySource,
    ToolDefinitionError,
    operation_ref,
    tool_definition_digest,
    tool_id,
)

# runtime-digest 5.8, verified vector.
WRITE_DOCUMENT: dict[str, Any] = {
    "name": "write_document", "description": "Create or update a document",
    "inputSchema": {"type": "object",
                    "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
                    "required": ["path", "content"]}}
WRITE_DOCUMENT_DIGEST = "sha-256:OAbEIh2DTYUVP7DjRhHct4aapsT8PybZq2ILdut9UP0"
READ_DOCUMENT: dict[str, Any] = {
    "name": "read_document", "description": "Read a document",
    "inputSchema": {"type": "object", "properties": {"path": {"type": "string"}},
                    "required": ["path"]}}
RESOURCE = "https://finance.example.com/mcp"


def test_the_verified_vector() -> None:
    assert tool_definition_digest(WRITE_DOCUMENT) == WRITE_DOCUMENT_DIGEST


def test_member_order_does_not_matter() -> None:
    reordered = {"inputSchema": {"required": ["path", "content"], "properties": {
        "content": {"type": "string"}, "path": {"type": "string"}}, "type": "object"},
        "description": "Create or update a document", "name": "write_document"}
    assert tool_definition_digest(reordered) == WRITE_DOCUMENT_DIGEST


def _digests(listing: list[dict[str, Any]]) -> dict[str, str]:
    return {tool["name"]: tool_definition_digest(tool) for tool in listing}


def test_another_tool_added_or_changed_leaves_this_digest_unchanged() -> None:
    before = _digests([WRITE_DOCUMENT, READ_DOCUMENT])
    changed = {**READ_DOCUMENT, "description": "Read a document, now with ranges"}
    added = {"name": "delete_document", "description": "Delete", "inputSchema": {}}
    for listing in ([WRITE_DOCUMENT, changed], [READ_DOCUMENT, WRITE_DOCUMENT, added],
                    [WRITE_DOCUMENT]):
        after = _digests(listing)
        assert after["write_document"] == before["write_document"] == WRITE_DOCUMENT_DIGEST
    assert _digests([changed])["read_document"] != before["read_document"]


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(tool: dict[str, Any]) -> None:
        node = tool
        for name in path[:-1]:
            node = node[name]
        node[path[-1]] = value
    return change


CHANGES: dict[str, Callable[[dict[str, Any]], None]] = {
    "name": _set(("name",), "write_documents"),
    "description": _set(("description",), "Create or update a document."),
    "property type": _set(("inputSchema", "properties", "path", "type"), "integer"),
    "property added": _set(("inputSchema", "properties", "mode"), {"type": "string"}),
    "required dropped": _set(("inputSchema", "required"), ["path"]),
    "required reordered": _set(("inputSchema", "required"), ["content", "path"]),
    "title added": _set(("title",), "Write"),
    "annotations added": _set(("annotations",), {"destructiveHint": True}),
    "outputSchema added": _set(("outputSchema",), {"type": "object"}),
    "_meta added": _set(("_meta",), {"version": "2"}),
    "extra schema keyword": _set(("inputSchema", "additionalProperties"), True),
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_any_change_to_this_tool_changes_its_digest(change: str) -> None:
    tool = copy.deepcopy(WRITE_DOCUMENT)
    CHANGES[change](tool)
    assert tool_definition_digest(tool) != WRITE_DOCUMENT_DIGEST


def test_a_fractional_number_in_a_schema_is_digested_as_published() -> None:
    # A JSON Schema bound such as "minimum": 0.5 is text to hash, not an amount to refuse.
    tool = _with_minimum(0.5)
    assert tool_definition_digest(tool) != tool_definition_digest(_with_minimum(1))
    assert tool_definition_digest(tool) == tool_definition_digest(_with_minimum(0.5))


def _with_minimum(value: Any) -> dict[str, Any]:
    tool = copy.deepcopy(WRITE_DOCUMENT)
    tool["inputSchema"]["properties"]["size"] = {"type": "number", "minimum": value}
    return tool


@pytest.mark.parametrize("definition", [
    ["not", "an", "object"], {"name": "x", "n": 2**60}, {"name": "\ud800"},
    {"name": "x", "minimum": float("nan")}], ids=["array", "big-int", "surrogate", "nan"])
def test_an_undigestible_definition_is_refused(definition: Any) -> None:
    with pytest.raises(ToolDefinitionError):
        tool_definition_digest(definition)


def test_tool_id_and_operation_ref() -> None:
    assert tool_id(RESOURCE, "post_adjustment") == f"{RESOURCE}#post_adjustment"
    assert operation_ref("post_adjustment") == "tools/post_adjustment"


def test_capability_source_round_trips_and_omits_absent_members() -> None:
    source = CapabilitySource.for_tool(RESOURCE, "write_document", WRITE_DOCUMENT,
                                       source_uri=RESOURCE)
    wire = source.to_json()
    assert wire == {"tool_id": f"{RESOURCE}#write_document", "source_uri": RESOURCE,
                    "source_digest": WRITE_DOCUMENT_DIGEST,
                    "operation_ref": "tools/write_document"}
    assert CapabilitySource.from_json(wire) == source
    bare = CapabilitySource(tool_id=f"{RESOURCE}#write_document")
    assert bare.to_json() == {"tool_id": f"{RESOURCE}#write_document"}
    assert CapabilitySource.from_json({**bare.to_json(), "executor": "mcp-01"}) == bare


@pytest.mark.parametrize("wire", [
    "tools/x", {}, {"tool_id": ""}, {"tool_id": 7}, {"tool_id": "t", "source_digest": None},
    {"tool_id": "t", "source_uri": ["u"]}, {"tool_id": "t", "operation_ref": ""}],
    ids=["string", "no-tool-id", "empty-tool-id", "number", "null-digest", "array-uri",
         "empty-operation-ref"])
def test_a_malformed_capability_source_is_refused(wire: Any) -> None:
    with pytest.raises(ValueError):
        CapabilitySource.from_json(wire)
