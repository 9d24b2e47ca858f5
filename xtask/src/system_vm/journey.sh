#!/bin/bash
# The operator's journey, run by pg-journey.service in the system VM (Debian 12, systemd as
# PID 1). Each `step` prints one result line, `PGSYS ok NAME: detail` or `PGSYS FAIL NAME: ...`
# with the step's output and the journal behind it; the host counts them. The README's own
# blocks (readme/*.sh) are run as an operator would type them, from a work directory that holds
# the package where the README says it is (./target/deb/).
set -u
export LITELLM_MASTER_KEY=sk-vm-journey-master
export OPENAI_API_KEY=sk-vm-journey-provider
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
P=/payload
W=/root/operator
CONFIG=/etc/proxyguard/proxyguard.toml
passed=0
failed=0

step() {
    local name=$1
    shift
    ( set -eE -o pipefail; "$@" ) >/root/step.out 2>&1
    local rc=$?
    if [ $rc -eq 0 ]; then
        passed=$((passed + 1))
        echo "PGSYS ok $name: $(tail -n 1 /root/step.out)"
    else
        failed=$((failed + 1))
        echo "PGSYS FAIL $name: exit $rc"
        tail -n 30 /root/step.out | sed 's/^/PGSYS |   /'
        journalctl -u proxyguard -u litellm --no-pager -n 25 -o short-monotonic | sed 's/^/PGSYS |   journal: /'
    fi
}

die() { echo "$*"; exit 1; }
prop() { systemctl show -p "$2" --value "$1"; }
main_pid() { prop proxyguard MainPID; }

# Polls until CMD succeeds; fails with DESC after SECS. Asserts the outcome, not the time taken.
wait_for() {
    local desc=$1 secs=$2
    shift 2
    local until=$((SECONDS + secs))
    until "$@"; do
        [ $SECONDS -lt $until ] || die "gave up waiting for: $desc"
        sleep 0.5
    done
}

running() { [ "$(prop proxyguard ActiveState)/$(prop proxyguard SubState)" = active/running ]; }
# Whether binding 0.0.0.0:PORT gives EPERM (prints EPERM, bound or the error).
bind_result() {
    python3 - "$1" <<'PY'
import errno, socket, sys
s = socket.socket()
# Connections the guard had open to the upstream leave TIME_WAIT sockets on its port; without
# SO_REUSEADDR they would make a free port look taken (EADDRINUSE) after the upstream stops.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
    print("bound")
except PermissionError as e:
    print("EPERM" if e.errno == errno.EPERM else f"errno {e.errno}")
except OSError as e:
    print(f"errno {e.errno}")
PY
}
expect_eperm() {
    local got
    got=$(bind_result "$1")
    [ "$got" = EPERM ] || die "binding 0.0.0.0:$1 gave $got, not EPERM"
}
# Whether something listens on TCP PORT. Read from /proc/net/tcp{,6}, not by connecting: the
# upstream guard refuses this script's connects to the upstream's port.
listening() {
    python3 - "$1" <<'PY'
import sys
port = ":%04X" % int(sys.argv[1])
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).readlines()[1:]:
        fields = line.split()
        if fields[1].endswith(port) and fields[3] == "0A":
            sys.exit(0)
sys.exit(1)
PY
}
# A field of `proxyguard status --json`, by a Python expression over `s`.
status_get() {
    proxyguard status --json | python3 -c "import json, sys; s = json.load(sys.stdin); print($1)"
}
bind_denied() { status_get 's["counters"]["bind"]["denied"]'; }

install_first() {
    mkdir -p "$W/target/deb"
    cp "$P"/debs/first/*.deb "$W/target/deb/"
    cd "$W"
    bash -ex "$P/readme/install.sh"
    running || die "proxyguard is $(prop proxyguard ActiveState)/$(prop proxyguard SubState)"
    [ "$(prop proxyguard Type)" = notify ] || die "the unit is not Type=notify"
    [ "$(prop proxyguard NRestarts)" = 0 ] || die "it restarted $(prop proxyguard NRestarts) times"
    # Type=notify: active (running) is only entered once READY=1 has arrived.
    echo "active (running) after READY=1, pid $(main_pid), $(dpkg-query -W -f='${Version}' proxyguard)"
}

status_shows_programs() {
    proxyguard status
    local names
    names=$(status_get '" ".join(sorted(p["name"] for p in s["programs"]))')
    for want in bind_rule_v4 bind_rule_v6; do
        case " $names " in *" $want "*) ;; *) die "$want is not attached: $names" ;; esac
    done
    local lsm
    lsm=$(status_get 'sum(1 for p in s["programs"] if "lsm" in p["hook"].lower())')
    [ "$lsm" -ge 1 ] || die "no LSM program attached; unavailable: $(status_get 's["unavailable"]')"
    local unavailable
    unavailable=$(status_get '"; ".join(f["name"] + ": " + f["detail"] for f in s["unavailable"]) or "none"')
    echo "attached: $names; unavailable: $unavailable; kernel.perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid)"
}

bind_rule_denies() {
    expect_eperm 4000
    python3 -c 'import socket; socket.socket().bind(("127.0.0.1", 4000))' || die "the loopback bind the rule allows failed"
    echo "0.0.0.0:4000 gives EPERM, 127.0.0.1:4000 binds"
}

# One denial is one journal entry: a warning (so `journalctl -p warning` finds it) whose message
# is the record alone, with no timestamp of its own (journald stamps it).
denial_is_one_warning() {
    local cursor entries
    cursor=$(journalctl -u proxyguard -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
    expect_eperm 4000
    wait_for "the denial as a journal warning" 30 sh -c "journalctl -u proxyguard --after-cursor='$cursor' -p warning -o cat --no-pager | grep -q '^bind_denied severity=high '"
    entries=$(journalctl -u proxyguard --after-cursor="$cursor" -o cat --no-pager | grep -c 'bind_denied\|bind denied') || true
    [ "$entries" -eq 1 ] || die "$entries journal entries for one denial"
    echo "$(journalctl -u proxyguard --after-cursor="$cursor" -p warning -o cat --no-pager | grep -m1 '^bind_denied ' | cut -c1-60)..."
}

reload_applies_an_edit() {
    local pid
    pid=$(main_pid)
    [ "$(bind_result 4001)" = bound ] || die "port 4001 is already ruled before the edit"
    printf '\n[[bind.rules]]\nport = 4001\nallow = ["127.0.0.1/32"]\n' >>"$CONFIG"
    proxyguard config check
    systemctl reload proxyguard
    expect_eperm 4001
    [ "$(main_pid)" = "$pid" ] || die "the reload replaced the process"
    running || die "not running after the reload"
    echo "the new rule for 4001 is in force, same pid $pid"
}

bad_reload_keeps_the_old_config() {
    local pid
    pid=$(main_pid)
    cp "$CONFIG" /root/good.toml
    # Whatever happens below, the next steps start from the good file.
    trap 'cp /root/good.toml "$CONFIG"; systemctl is-active -q proxyguard || systemctl restart proxyguard' EXIT
    # The crafted log level that once panicked tracing-subscriber's parser (issue 19).
    python3 - "$CONFIG" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text = re.sub(r'(?m)^level = .*$', 'level = "\\t\u05d1["', text, count=1)
open(path, "w").write(text)
PY
    if proxyguard config check; then die "config check accepted the crafted log level"; fi
    if systemctl reload proxyguard; then die "systemctl reload accepted the crafted log level"; fi
    running || die "the daemon is down after a bad reload"
    # The daemon's own path too: SIGHUP makes it read the file itself.
    local cursor
    cursor=$(journalctl -u proxyguard -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
    kill -HUP "$pid"
    wait_for "the daemon to answer SIGHUP" 60 sh -c "journalctl -u proxyguard --after-cursor='$cursor' --no-pager | grep -q 'reload refused'"
    running || die "the daemon is down after SIGHUP with a bad file"
    [ "$(main_pid)" = "$pid" ] || die "the bad reload replaced the process"
    expect_eperm 4001
    cp /root/good.toml "$CONFIG"
    systemctl reload proxyguard
    echo "refused by config check, systemctl reload and SIGHUP; pid $pid still serving the old config"
}

kill_9_restarts_and_adopts() {
    local pid restarts denied
    pid=$(main_pid)
    restarts=$(prop proxyguard NRestarts)
    expect_eperm 4000
    denied=$(bind_denied)
    kill -9 "$pid"
    expect_eperm 4000 # the pins hold while no daemon runs
    wait_for "a new main process" 120 sh -c "[ \"\$(systemctl show -p MainPID --value proxyguard)\" != $pid ] && [ \"\$(systemctl show -p MainPID --value proxyguard)\" != 0 ]"
    wait_for "active (running)" 120 running
    [ "$(prop proxyguard NRestarts)" -gt "$restarts" ] || die "NRestarts did not grow"
    local not_adopted
    not_adopted=$(status_get '" ".join(p["name"] for p in s["programs"] if not p.get("adopted"))')
    [ -z "$not_adopted" ] || die "attached anew instead of adopted: $not_adopted"
    local after
    after=$(bind_denied)
    [ "$after" -ge $((denied + 1)) ] || die "bind.denied went from $denied to $after"
    expect_eperm 4000
    [ "$(bind_denied)" -eq $((after + 1)) ] || die "bind.denied did not count the next denial"
    echo "pid $pid -> $(main_pid), every program adopted, bind.denied $denied -> $((after + 1))"
}

watchdog_restarts_a_stopped_daemon() {
    local pid restarts
    pid=$(main_pid)
    restarts=$(prop proxyguard NRestarts)
    kill -STOP "$pid"
    wait_for "the watchdog to replace pid $pid" 240 sh -c "p=\$(systemctl show -p MainPID --value proxyguard); [ \"\$p\" != $pid ] && [ \"\$p\" != 0 ]"
    wait_for "active (running)" 120 running
    [ "$(prop proxyguard NRestarts)" -gt "$restarts" ] || die "NRestarts did not grow"
    journalctl -u proxyguard --no-pager | grep -q "Watchdog timeout" || die "the journal names no watchdog timeout"
    expect_eperm 4000
    echo "watchdog timeout: pid $pid -> $(main_pid)"
}

stop_and_start() {
    systemctl stop proxyguard
    [ "$(prop proxyguard ActiveState)" = inactive ] || die "still $(prop proxyguard ActiveState) after stop"
    expect_eperm 4000
    systemctl start proxyguard
    running || die "not running after start"
    echo "stopped (rules stayed in force), started again as pid $(main_pid)"
}

exposure_online() {
    local line score
    line=$(systemd-analyze security proxyguard.service --no-pager | grep "Overall exposure level")
    score=$(echo "$line" | grep -oE '[0-9]+\.[0-9]+' | head -n 1)
    python3 -c "import sys; sys.exit(0 if float('$score') <= 4.0 else 1)" || die "exposure $score > 4.0: $line"
    echo "systemd-analyze security (online): exposure $score"
}

guarded_service_hardened() {
    install -D -m 0755 "$P/upstream.py" /usr/local/lib/pg-journey/upstream.py
    cat >/etc/systemd/system/litellm.service <<'UNIT'
[Unit]
Description=stand-in for LiteLLM's proxy on 127.0.0.1:4000
[Service]
ExecStart=/usr/bin/python3 /usr/local/lib/pg-journey/upstream.py
[Install]
WantedBy=multi-user.target
UNIT
    systemctl daemon-reload
    systemctl enable --now litellm.service
    cd "$W"
    bash -ex "$P/readme/harden.sh"
    [ "$(prop litellm ActiveState)" = active ] || die "litellm.service is $(prop litellm ActiveState) under the drop-in"
    [ -n "$(systemctl show -p DropInPaths --value litellm | grep proxyguard.conf)" ] || die "the drop-in is not loaded"
    local key body
    # The README's own key step (step 3 of "Five minutes with proxyguard").
    key=$(proxyguard keys add ci --expires 90d)
    wait_for "the upstream to listen" 30 listening 4000
    body=$(curl -fsS -H "Authorization: Bearer $key" http://127.0.0.1:8080/v1/models)
    local want
    want=$(printf 'Bearer %s' "$LITELLM_MASTER_KEY" | sha256sum | cut -d' ' -f1)
    echo "$body" | python3 -c "
import json, sys
b = json.load(sys.stdin)
assert b['authorization_sha256'] == '$want', 'the upstream did not get the injected master key'
assert b['client_key_seen'] is False, 'the client key reached the upstream'
assert b['credential'] == 'present', 'credential: ' + b['credential']
"
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/v1/models)
    [ "$code" = 401 ] || die "no key gave $code, not 401"
    # Before the operator has written the credential file, the drop-in must not stop the service.
    mv /etc/proxyguard/credentials/litellm /root/litellm.credential
    systemctl restart litellm.service
    [ "$(prop litellm ActiveState)" = active ] || die "without its credential file litellm.service is $(prop litellm ActiveState)/$(prop litellm Result)"
    wait_for "the upstream to listen again" 30 listening 4000
    curl -fsS -H "Authorization: Bearer $key" http://127.0.0.1:8080/v1/models | grep -q '"credential": "empty"' || die "the credential was not empty without its file"
    mv /root/litellm.credential /etc/proxyguard/credentials/litellm
    systemctl restart litellm.service
    echo "litellm.service runs under the drop-in, with or without its credential file; served through proxyguard with the injected key; 401 without one"
}

# The upstream guard: this script runs outside proxyguard.service's cgroup, so its connect to the
# upstream's port is refused (and reported), while a request through the guard is still served.
upstream_guard_refuses_others() {
    local cursor got key
    # The previous step restarted the upstream last.
    wait_for "the upstream to listen" 30 listening 4000
    cursor=$(journalctl -u proxyguard -n 0 --show-cursor --no-pager | sed -n 's/^-- cursor: //p')
    got=$(python3 - <<'PY'
import errno, socket
try:
    socket.create_connection(("127.0.0.1", 4000), 2)
    print("connected")
except OSError as e:
    print("EPERM" if e.errno == errno.EPERM else f"errno {e.errno}")
PY
)
    [ "$got" = EPERM ] || die "127.0.0.1:4000 from outside proxyguard.service gave $got, not EPERM"
    wait_for "the denial in the journal" 30 sh -c "journalctl -u proxyguard --after-cursor='$cursor' -o cat --no-pager | grep -q '^upstream_connect_denied '"
    key=$(proxyguard keys add upstream-guard --expires 1d)
    curl -fsS -o /dev/null -H "Authorization: Bearer $key" http://127.0.0.1:8080/v1/models || die "the guard no longer reaches the upstream"
    echo "127.0.0.1:4000 from outside proxyguard.service: EPERM and upstream_connect_denied; still served through the guard"
}

upgrade_without_a_gap() {
    local before_version before_pid
    before_version=$(dpkg-query -W -f='${Version}' proxyguard)
    before_pid=$(main_pid)
    local before_manifest before_ids
    before_manifest=$(readlink /sys/fs/bpf/proxyguard/manifest)
    before_ids=$(status_get '" ".join(str(p["program_id"]) for p in s["programs"] if p.get("program_id"))')
    rm -f /root/bind-stop
    python3 "$P/bind_loop.py" 4000 /root/bind-stop >/root/bind-loop.out &
    local loop=$!
    sleep 1
    rm -f "$W"/target/deb/*.deb
    cp "$P"/debs/upgrade/*.deb "$W/target/deb/"
    cd "$W"
    bash -ex "$P/readme/upgrade.sh"
    wait_for "active (running) after the upgrade" 120 running
    sleep 1
    touch /root/bind-stop
    wait "$loop"
    local counts
    counts=$(cat /root/bind-loop.out)
    echo "bind loop: $counts"
    case "$counts" in *" bound=0 other=0") ;; *) die "the forbidden bind got through during the upgrade: $counts" ;; esac
    local attempts=${counts%% *}
    attempts=${attempts#attempts=}
    [ "$attempts" -ge 100 ] || die "the loop only tried $attempts times"
    local after_version
    after_version=$(dpkg-query -W -f='${Version}' proxyguard)
    [ "$after_version" != "$before_version" ] || die "the version did not change ($after_version)"
    [ "$(main_pid)" != "$before_pid" ] || die "the service was not restarted onto the new binary"
    expect_eperm 4000
    expect_eperm 4001
    # The new daemon runs the new object's programs: the manifest names another object, and every
    # program was replaced (a new id), none adopted from the old object.
    [ "$(readlink /sys/fs/bpf/proxyguard/manifest)" != "$before_manifest" ] || die "the pin manifest still names the old object"
    local not_replaced
    not_replaced=$(status_get '" ".join(p["name"] for p in s["programs"] if not p.get("replaced"))')
    [ -z "$not_replaced" ] || die "not replaced by the new object: $not_replaced"
    local id
    for id in $(status_get '" ".join(str(p["program_id"]) for p in s["programs"] if p.get("program_id"))'); do
        case " $before_ids " in *" $id "*) die "program id $id survived the upgrade" ;; esac
    done
    echo "$before_version -> $after_version, every program replaced with a new id, $attempts forbidden binds tried during it, none bound"
}

purge_detaches() {
    cd "$W"
    bash -ex "$P/readme/remove.sh"
    # The guarded service still listens on 127.0.0.1:4000 (a bind there would be EADDRINUSE), so
    # the rule's lifting shows on 4001, which the reload step ruled and nothing listens on.
    [ "$(bind_result 4001)" = bound ] || die "0.0.0.0:4001 still refused after purge: $(bind_result 4001)"
    systemctl stop litellm.service
    [ "$(bind_result 4000)" = bound ] || die "0.0.0.0:4000 still refused after purge: $(bind_result 4000)"
    [ ! -e /sys/fs/bpf/proxyguard ] || die "pins left behind: $(ls /sys/fs/bpf/proxyguard)"
    echo "purged: rules detached, no pins left"
}

echo "PGSYS journey on $(uname -r), $(systemctl --version | head -n 1)"
step install install_first
step status status_shows_programs
step bind-eperm bind_rule_denies
step journal-warning denial_is_one_warning
step reload reload_applies_an_edit
step bad-reload bad_reload_keeps_the_old_config
step kill-9 kill_9_restarts_and_adopts
step watchdog watchdog_restarts_a_stopped_daemon
step stop-start stop_and_start
step exposure exposure_online
step guarded-service guarded_service_hardened
step upstream-guard upstream_guard_refuses_others
step upgrade upgrade_without_a_gap
step purge purge_detaches
echo "PGSYS-END passed=$passed failed=$failed"
# Power off at once: the unit's SuccessAction= alone was seen to leave the guest up. The image is
# a throwaway snapshot, so nothing needs a clean shutdown.
sync
echo o >/proc/sysrq-trigger
