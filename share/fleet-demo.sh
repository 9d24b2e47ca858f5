#!/bin/sh
# The fleet demo (issue 15): one Redis and three proxyguards on loopback sharing a key's budgets,
# so a person can watch one budget spent across all three in `proxyguard usage` on each.
#
#   sudo share/fleet-demo.sh [PROXYGUARD_BINARY]   (default: target/debug/proxyguard)
#
# Needs Debian's redis-server (`cargo xtask setup` installs it) and python3 (the upstream: a
# small mock that answers every chat completion with 10 prompt and 20 completion tokens). Prints
# the key and the commands to run; Ctrl-C stops everything and removes the temp directory.
set -eu
BIN=$(realpath "${1:-target/debug/proxyguard}")
command -v redis-server >/dev/null || { echo "redis-server missing: apt-get install redis-server" >&2; exit 1; }
DIR=$(mktemp -d /tmp/proxyguard-fleet-demo.XXXXXX)
chmod 700 "$DIR"
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT INT TERM

REDIS_PORT=6390 UPSTREAM_PORT=8190
mkdir "$DIR/redis"
redis-server --bind 127.0.0.1 --port $REDIS_PORT --dir "$DIR/redis" --save "" --appendonly yes >"$DIR/redis.log" 2>&1 &
PIDS="$PIDS $!"

cat >"$DIR/upstream.py" <<'PY'
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = json.dumps({"id": "demo", "object": "chat.completion", "model": "demo",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
python3 "$DIR/upstream.py" $UPSTREAM_PORT &
PIDS="$PIDS $!"

# The upstream and Redis answer before the instances start (any HTTP answer will do).
tries=0
until curl -s -o /dev/null "http://127.0.0.1:$UPSTREAM_PORT/" && redis-cli -p $REDIS_PORT ping >/dev/null 2>&1; do
  tries=$((tries + 1))
  [ $tries -lt 300 ] || { echo "the upstream or Redis did not start (see $DIR)" >&2; exit 1; }
  sleep 0.1
done

printf 'sk-demo-upstream\n' >"$DIR/upstream.key"
chmod 600 "$DIR/upstream.key"
KEY="pgk_$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
HASH=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)

i=0
for n in a b c; do
  i=$((i + 1))
  port=$((8180 + i))
  mkdir -m 700 "$DIR/$n"
  cat >"$DIR/$n.toml" <<TOML
[kernel]
pin_dir = "/sys/fs/bpf/proxyguard-fleet-demo-$n"

[control]
socket = "$DIR/$n/control.sock"

[bind]
enabled = false

[upstream_guard]
enabled = false

[proxy]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$((port + 100))"
upstream = "http://127.0.0.1:$UPSTREAM_PORT"
upstream_key_file = "$DIR/upstream.key"

[fleet]
redis_url = "redis://127.0.0.1:$REDIS_PORT/0"
instance = "host-$n"
expected_instances = 3

[[proxy.keys]]
name = "demo"
sha256 = "$HASH"
requests_per_day = 50
tokens_per_day = 1200
TOML
  chmod 600 "$DIR/$n.toml"
  "$BIN" run --no-kernel --config "$DIR/$n.toml" >"$DIR/$n.log" 2>&1 &
  PIDS="$PIDS $!"
done
# Ready when each instance's control socket answers (a loaded machine takes a while).
for n in a b c; do
  tries=0
  until "$BIN" status --config "$DIR/$n.toml" >/dev/null 2>&1; do
    tries=$((tries + 1))
    [ $tries -lt 300 ] || { echo "host-$n did not start; its log:" >&2; cat "$DIR/$n.log" >&2; exit 1; }
    sleep 0.2
  done
done
cat <<TXT
Redis on 127.0.0.1:$REDIS_PORT; proxyguard host-a, host-b, host-c on 127.0.0.1:8181, 8182, 8183.
Key "demo" (50 requests and 1200 tokens a day, shared): $KEY

Spend it round-robin:
  for i in \$(seq 60); do p=\$((8181 + i % 3)); curl -s -o /dev/null -w "%{http_code} " \\
    -H "authorization: Bearer $KEY" -H 'content-type: application/json' \\
    -d '{"model":"m","max_tokens":20,"messages":[{"role":"user","content":"hi"}]}' \\
    http://127.0.0.1:\$p/v1/chat/completions; done; echo
Watch it on each (fleet.today is the shared count; today is this host's own):
  $BIN usage --config $DIR/a.toml      (and b.toml, c.toml)
  $BIN status --json --config $DIR/a.toml | python3 -c 'import json,sys; print(json.load(sys.stdin)["fleet"])'
Stop Redis to see each fall back to its share (kill the redis-server), start it again to share.
Ctrl-C stops the demo.
TXT
wait
