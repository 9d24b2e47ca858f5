#!/usr/bin/env python3
"""The guarded service in the system VM: a stand-in for LiteLLM on 127.0.0.1:4000.

It reports what it received, without echoing secrets: a hash of the Authorization header (so the
journey can check that proxyguard injected the upstream key), whether any header carried a
proxyguard client key, and whether systemd handed it the provider-keys credential.
"""
import hashlib
import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        auth = self.headers.get("Authorization", "")
        creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
        keyfile = os.path.join(creds, "provider-keys") if creds else ""
        try:
            with open(keyfile) as f:
                credential = "present" if "OPENAI_API_KEY=" in f.read() else "empty"
        except OSError:
            credential = "absent"
        body = json.dumps(
            {
                "object": "list",
                "data": [],
                "authorization_sha256": hashlib.sha256(auth.encode()).hexdigest(),
                "client_key_seen": any("pgk_" in v for v in self.headers.values()),
                "credential": credential,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", 4000), Handler).serve_forever()
