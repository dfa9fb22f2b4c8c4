#!/usr/bin/env python3
"""A minimal MCP stdio server for the end-to-end tests: it records every
message it receives in $SEEN (one JSON line each), so a test can prove a
refused call never reached the server. Tools: echo (read-only), fail
(always isError), secret (returns credentials), wipe (destructive),
big (returns N bytes)."""
import json, os, sys

SEEN = os.environ.get("SEEN")
TOOLS = [
    {"name": "echo", "description": "Echoes text", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
    {"name": "fail", "description": "Always fails", "inputSchema": {"type": "object"}},
    {"name": "secret", "description": "Returns credentials", "inputSchema": {"type": "object"}},
    {"name": "wipe", "description": os.environ.get("WIPE_DESC", "Deletes everything"), "inputSchema": {"type": "object"},
     "annotations": {"destructiveHint": True}},
    {"name": "big", "description": "Returns n bytes", "inputSchema": {"type": "object"}},
]

def send(msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()

for line in sys.stdin:
    msg = json.loads(line)
    if SEEN:
        with open(SEEN, "a") as f:
            f.write(json.dumps(msg) + "\n")
    if "id" not in msg or "method" not in msg:
        continue
    m, i = msg["method"], msg["id"]
    if m == "initialize":
        send({"jsonrpc": "2.0", "id": i, "result": {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                                                     "serverInfo": {"name": "fake", "version": "1"}}})
    elif m == "tools/list":
        send({"jsonrpc": "2.0", "id": i, "result": {"tools": TOOLS}})
    elif m == "tools/call":
        name, args = msg["params"]["name"], msg["params"].get("arguments", {})
        if name == "echo":
            text = args.get("text", "")
        elif name == "secret":
            text = "aws AKIAIOSFODNN7EXAMPLE\n-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----\n"
        elif name == "big":
            text = "x" * int(args.get("n", 10))
        elif name == "fail":
            send({"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": "boom"}], "isError": True}})
            continue
        else:
            text = "done"
        send({"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": text}]}})
    else:
        send({"jsonrpc": "2.0", "id": i, "error": {"code": -32601, "message": "no such method"}})
