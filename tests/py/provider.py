"""A slow OpenAI-compatible provider behind LiteLLM, for the streaming test: it sends the first
chunk, then waits until the client has received it (the GATE file appears) before sending the rest.
If anything between buffered the stream, the gate would never open; the provider then finishes
after TIMEOUT seconds and records that in STATE. No timing is asserted, only the order.

Model "stall" holds even the response head until the gate opens.

usage: provider.py PORT GATE STATE
"""
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, GATE, STATE = int(sys.argv[1]), sys.argv[2], sys.argv[3]
TIMEOUT = 30
WORDS = ["one ", "two ", "three ", "four ", "five"]


def chunk(text, finish=None):
    body = {"id": "chatcmpl-slow", "object": "chat.completion.chunk", "created": 0, "model": "slow",
            "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if b'"stall"' in body:
            # Model "stall": no response head until the gate opens (the upstream-timeout test).
            deadline = time.monotonic() + TIMEOUT
            while not os.path.exists(GATE) and time.monotonic() < deadline:
                time.sleep(0.01)
        # What arrived, for the forwarding test: header names in lower case, with values.
        with open(STATE + ".headers", "w") as f:
            json.dump({k.lower(): v for k, v in self.headers.items()}, f)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        self.wfile.write(chunk(WORDS[0]))
        self.wfile.flush()
        deadline = time.monotonic() + TIMEOUT
        while not os.path.exists(GATE) and time.monotonic() < deadline:
            time.sleep(0.01)
        gated = os.path.exists(GATE)
        for word in WORDS[1:]:
            self.wfile.write(chunk(word))
        self.wfile.write(chunk(None, "stop"))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        with open(STATE, "w") as f:
            f.write("first-chunk-seen-before-finish" if gated else "finished-without-client-seeing-a-chunk")

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
