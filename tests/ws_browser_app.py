"""The Starlette app that ``test_websocket_browser.py`` serves to headless Chromium.

- ``GET /``: a page whose script opens ``new WebSocket("ws://" + location.host + "/ws")``
  (``wss://`` over HTTPS) asking for the subprotocol :data:`SUBPROTOCOL`, sends the text messages
  of :data:`TEXTS` and one binary message (an ``ArrayBuffer`` of :data:`BINARY`), waits for the
  server's greeting and every echo, then sends :data:`CLOSE_REQUEST`; the server closes with
  :data:`CLOSE_CODE` / :data:`CLOSE_REASON`. The page then POSTs what it saw to ``/report`` as JSON
  (also when something goes wrong, or after :data:`PAGE_TIMEOUT_MS`).
- ``/ws``: the WebSocket endpoint. It accepts, sends :data:`SERVER_HELLO` before reading anything,
  echoes text as ``"echo: " + text`` and binary unchanged, and closes on :data:`CLOSE_REQUEST`.
- ``POST /report``: writes ``{"browser": <the page's JSON>, "server": <what this process saw>}`` to
  the file named by the ``WS_BROWSER_REPORT`` environment variable (atomically, by rename).

The page and the test share the plan through this module, so they cannot drift apart.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

SUBPROTOCOL = "trioserve-test.v1"
SERVER_HELLO = "hello from the server"
CLOSE_REQUEST = "please close"
CLOSE_CODE = 4001
CLOSE_REASON = "server says bye"
PAGE_TIMEOUT_MS = 30_000
BIG_TEXT_LENGTH = 70_000  # over 65535: the 64-bit payload length form (and likely fragments)


def big_text() -> str:
    return "".join(chr(ord("a") + i % 26) for i in range(BIG_TEXT_LENGTH))


# Text messages in the order the page sends them: ASCII, non-ASCII UTF-8 (2-, 3- and 4-byte
# sequences), an empty message, and a long one.
TEXTS = ["first", "second message", "ünïcødé ✓ \U0001f389", "", big_text()]
# Every byte value, including sequences that are not UTF-8.
BINARY = bytes(range(256))


def echo_text(text: str) -> str:
    return "echo: " + text


# What this process saw, for the report (one server process per test).
STATE: dict[str, Any] = {"page_http_version": None, "connections": []}


def page_html() -> str:
    plan = {
        "subprotocol": SUBPROTOCOL,
        "texts": TEXTS,
        "binary": list(BINARY),
        "closeRequest": CLOSE_REQUEST,
        "timeoutMs": PAGE_TIMEOUT_MS,
    }
    # ensure_ascii: the plan reaches the script as pure ASCII whatever the page's charset.
    plan_json = json.dumps(plan, ensure_ascii=True)
    return PAGE_TEMPLATE.replace("__PLAN__", plan_json)


PAGE_TEMPLATE = """<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>running</title></head>
<body>
<p id="status">running</p>
<script>
"use strict";
const PLAN = __PLAN__;
const report = {
  sent: [], received: [], events: [], errors: [],
  url: null, protocol: null, extensions: null, close: null,
  navigationProtocol: null, finish: null, userAgent: navigator.userAgent,
};
function hex(buffer) {
  return Array.from(new Uint8Array(buffer), b => b.toString(16).padStart(2, "0")).join("");
}
function describe(data) {
  if (typeof data === "string") return {type: "text", data: data};
  if (data instanceof ArrayBuffer) return {type: "binary", hex: hex(data)};
  return {type: "other", data: String(data)};
}
function setStatus(text) {
  document.title = text;
  document.getElementById("status").textContent = text;
}
let reported = false;
async function sendReport(why) {
  if (reported) return;
  reported = true;
  report.finish = why;
  const nav = performance.getEntriesByType("navigation")[0];
  report.navigationProtocol = nav ? nav.nextHopProtocol : null;
  try {
    const response = await fetch("/report", {
      method: "POST", headers: {"content-type": "application/json"},
      body: JSON.stringify(report),
    });
    setStatus("reported " + response.status);
  } catch (e) {
    setStatus("report failed: " + e);
  }
}
window.addEventListener("error", ev => report.errors.push("page error: " + ev.message));
setTimeout(() => { report.errors.push("page timeout"); sendReport("timeout"); }, PLAN.timeoutMs);

// the greeting, one echo per text message and one for the binary message
const expected = 1 + PLAN.texts.length + 1;
try {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  report.url = scheme + location.host + "/ws";
  const ws = new WebSocket(report.url, [PLAN.subprotocol]);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    report.events.push("open");
    report.protocol = ws.protocol;
    report.extensions = ws.extensions;
    for (const text of PLAN.texts) {
      ws.send(text);
      report.sent.push(describe(text));
    }
    const buffer = new Uint8Array(PLAN.binary).buffer;
    ws.send(buffer);
    report.sent.push(describe(buffer));
  };
  ws.onmessage = ev => {
    report.received.push(describe(ev.data));
    if (report.received.length === expected) {
      ws.send(PLAN.closeRequest);
      report.sent.push(describe(PLAN.closeRequest));
    }
  };
  ws.onerror = () => report.events.push("error");
  ws.onclose = ev => {
    report.events.push("close");
    report.close = {code: ev.code, reason: ev.reason, wasClean: ev.wasClean};
    sendReport("closed");
  };
} catch (e) {
  report.errors.push("WebSocket constructor: " + e);
  sendReport("constructor failed");
}
</script>
</body>
</html>
"""


def describe(text: str | None, data: bytes | None) -> dict[str, Any]:
    if text is not None:
        return {"type": "text", "data": text}
    return {"type": "binary", "hex": (data or b"").hex()}


async def homepage(request: Request) -> Response:
    STATE["page_http_version"] = request.scope.get("http_version")
    return HTMLResponse(page_html(), headers={"cache-control": "no-store"})


async def ws_endpoint(websocket: WebSocket) -> None:
    scope = websocket.scope
    record: dict[str, Any] = {
        "http_version": scope.get("http_version"),
        "scheme": scope.get("scheme"),
        "path": scope.get("path"),
        "subprotocols": list(scope.get("subprotocols") or []),
        "received": [],
        "end": None,
    }
    STATE["connections"].append(record)
    chosen = SUBPROTOCOL if SUBPROTOCOL in record["subprotocols"] else None
    await websocket.accept(subprotocol=chosen)
    await websocket.send_text(SERVER_HELLO)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            record["end"] = {"by": "client", "code": message.get("code")}
            return
        text, data = message.get("text"), message.get("bytes")
        record["received"].append(describe(text, data))
        if text is not None:
            if text == CLOSE_REQUEST:
                await websocket.close(code=CLOSE_CODE, reason=CLOSE_REASON)
                record["end"] = {"by": "server", "code": CLOSE_CODE}
                return
            await websocket.send_text(echo_text(text))
        else:
            await websocket.send_bytes(data or b"")


def write_report(target: str, content: dict[str, Any]) -> None:
    """Write the report where the test waits for it: whole or not at all (by rename)."""
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f)
    os.replace(tmp, target)


async def report(request: Request) -> Response:
    browser = await request.json()
    server = dict(STATE, report_http_version=request.scope.get("http_version"))
    target = os.environ.get("WS_BROWSER_REPORT")
    if target:
        await run_in_threadpool(write_report, target, {"browser": browser, "server": server})
    print(f"ws_browser_app: report received ({browser.get('finish')})", file=sys.stderr,
          flush=True)
    return JSONResponse({"ok": True})


app = Starlette(routes=[
    Route("/", homepage),
    Route("/report", report, methods=["POST"]),
    WebSocketRoute("/ws", ws_endpoint),
])
