#!/usr/bin/env python3
"""Drives an MCP server with the official MCP Python SDK client (PyPI `mcp`),
for the end-to-end tests of `portcullis run --mcp`.

    driver.py SCRIPT.json

SCRIPT: {"command": str, "args": [str], "env": {str: str}, "cwd": str,
         "calls": [{"tool": str, "arguments": {...}}]}
Prints one JSON object: {"server": name, "tools": [names],
  "calls": [{"ok": true, "isError": bool, "text": str} |
            {"ok": false, "code": int, "message": str, "data": ...}]}
"""
import asyncio, json, sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
try:
    from mcp.shared.exceptions import McpError
except ImportError:  # SDK 2.x
    from mcp.shared.exceptions import MCPError as McpError


async def main(script):
    params = StdioServerParameters(command=script["command"], args=script.get("args", []),
                                   env=script.get("env"), cwd=script.get("cwd"))
    out = {"calls": []}
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            info = getattr(init, "serverInfo", None) or getattr(init, "server_info", None)
            out["server"] = info.name
            tools = await session.list_tools()
            out["tools"] = [t.name for t in tools.tools]
            for c in script.get("calls", []):
                try:
                    r = await session.call_tool(c["tool"], c.get("arguments", {}))
                    text = "".join(getattr(x, "text", "") for x in r.content)
                    is_error = getattr(r, "isError", None)
                    if is_error is None:
                        is_error = getattr(r, "is_error", False)
                    out["calls"].append({"ok": True, "isError": bool(is_error), "text": text})
                except McpError as e:
                    out["calls"].append({"ok": False, "code": e.error.code, "message": e.error.message,
                                         "data": e.error.data})
    print(json.dumps(out))


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        asyncio.run(main(json.load(f)))
