"""The upstream MCP server of the conformance test configuration: the tools the MCP
conformance suite's server scenarios call (``@modelcontextprotocol/conformance``, server
mode), written on the official SDK's low-level ``Server`` so each tool's ``inputSchema`` is
listed exactly as written (the ``json-schema-2020-12`` scenario checks that ``$schema``,
``$defs`` and ``additionalProperties`` survive the way through the gateway).

Only tools whose scenario can pass through a stateless gateway are here (the table in
tests/conformance/README.md says which scenarios apply and why). Run on its own::

    python -m tests.conformance.upstream --port 8766     # streamable HTTP at /mcp
"""

from __future__ import annotations

import argparse
import base64
import json
from collections.abc import Callable, Sequence
from typing import Any, Final

from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    AudioContent,
    CallToolRequestParams,
    CallToolResult,
    ContentBlock,
    EmbeddedResource,
    ImageContent,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    TextResourceContents,
    Tool,
)
from starlette.applications import Starlette

MCP_PATH: Final = "/mcp"
SERVER_NAME: Final = "missionbound-conformance-upstream"

# A 1x1 PNG and a tiny WAV: content, not meaning (the scenarios check type, data, mimeType).
PNG_1X1: Final = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201e2b3f6a8"
    "0000000049454e44ae426082")).decode()
WAV_SILENCE: Final = base64.b64encode(
    b"RIFF" + (36 + 2).to_bytes(4, "little") + b"WAVEfmt " + (16).to_bytes(4, "little")
    + (1).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    + (16000).to_bytes(4, "little") + (2).to_bytes(2, "little") + (16).to_bytes(2, "little")
    + b"data" + (2).to_bytes(4, "little") + b"\x00\x00").decode()

NO_ARGUMENTS: Final[dict[str, Any]] = {"type": "object", "properties": {}}
JSON_SCHEMA_2020_12: Final = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_TOOL_INPUT: Final[dict[str, Any]] = {
    "$schema": JSON_SCHEMA_2020_12,
    "type": "object",
    "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"},
                                                          "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False,
}


def _text(text: str) -> list[ContentBlock]:
    return [TextContent(type="text", text=text)]


def _image() -> ImageContent:
    return ImageContent(type="image", data=PNG_1X1, mime_type="image/png")


def _resource(uri: str, payload: Any) -> EmbeddedResource:
    return EmbeddedResource(type="resource", resource=TextResourceContents(
        uri=uri, mime_type="application/json", text=json.dumps(payload)))


# name -> (description, inputSchema, what the call answers)
ToolBody = Callable[[dict[str, Any]], CallToolResult]
TOOLS: Final[dict[str, tuple[str, dict[str, Any], ToolBody]]] = {
    "test_simple_text": (
        "Returns a simple text response", NO_ARGUMENTS,
        lambda _: CallToolResult(content=_text("This is a simple text response for testing."))),
    "test_image_content": (
        "Returns an image (a 1x1 PNG)", NO_ARGUMENTS,
        lambda _: CallToolResult(content=[_image()])),
    "test_audio_content": (
        "Returns audio (a short silent WAV)", NO_ARGUMENTS,
        lambda _: CallToolResult(content=[AudioContent(type="audio", data=WAV_SILENCE,
                                                       mime_type="audio/wav")])),
    "test_embedded_resource": (
        "Returns an embedded resource", NO_ARGUMENTS,
        lambda _: CallToolResult(content=[_resource(
            "test://embedded-resource", {"text": "This is an embedded resource content."})])),
    "test_multiple_content_types": (
        "Returns text, an image and an embedded resource", NO_ARGUMENTS,
        lambda _: CallToolResult(content=[
            TextContent(type="text", text="Multiple content types test:"), _image(),
            _resource("test://mixed-content-resource", {"test": "data", "value": 123})])),
    "test_error_handling": (
        "Always answers with a tool error", NO_ARGUMENTS,
        lambda _: CallToolResult(is_error=True, content=_text(
            "This tool intentionally returns an error for testing"))),
    "json_schema_2020_12_tool": (
        "Tool with JSON Schema 2020-12 features", SCHEMA_TOOL_INPUT,
        lambda arguments: CallToolResult(content=_text(json.dumps(arguments)))),
}


def build_conformance_server(tools: Sequence[str] | None = None) -> Server[Any]:
    """The upstream's MCP server with ``tools`` (default: all of :data:`TOOLS`)."""
    offered = {name: TOOLS[name] for name in (tools if tools is not None else TOOLS)}

    async def list_tools(_ctx: ServerRequestContext[Any, Any],
                         _params: PaginatedRequestParams | None) -> ListToolsResult:
        return ListToolsResult(tools=[
            Tool(name=name, description=description, input_schema=schema)
            for name, (description, schema, _) in offered.items()])

    async def call_tool(_ctx: ServerRequestContext[Any, Any],
                        params: CallToolRequestParams) -> CallToolResult:
        if params.name not in offered:
            raise MCPError(INVALID_PARAMS, f"unknown tool {params.name[:64]!r}")
        return offered[params.name][2](dict(params.arguments or {}))

    return Server(SERVER_NAME, version="1", on_list_tools=list_tools, on_call_tool=call_tool)


def build_conformance_app() -> Starlette:
    """Streamable HTTP at :data:`MCP_PATH`, stateless, JSON responses (serve it with its
    lifespan, which runs the SDK's session manager)."""
    return build_conformance_server().streamable_http_app(
        streamable_http_path=MCP_PATH, stateless_http=True, json_response=True)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args(argv)
    uvicorn.run(build_conformance_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
