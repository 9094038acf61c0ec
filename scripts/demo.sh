#!/usr/bin/env bash
# A guided tour of `lfx-sync backfill` on a laptop (`just demo`).
#
#   1. starts PostgreSQL, NATS (JetStream) and moto on loopback (scripts/services.sh up)
#   2. (re)creates the sample v1 database `lfx_v1_demo` from tests/fixtures/singer/lfx_v1_seed.sql
#   3. builds target/release/lfx-sync
#   4. starts from an empty KV bucket `v1-objects-demo` and an empty state `demo`, then:
#        step 1  full backfill
#        step 2  changes in v1 (lfx_v1_update.sql), then an incremental backfill
#        step 3  a second full backfill: the guard leaves every entry as it is
#        step 4  the stored bookmarks (`lfx-sync state show`)
#        step 5  a few entries of the bucket
#        step 6  `lfx-sync sync`: live changes as wal-listener publishes them, into the same bucket
#
# Re-runnable: every run starts again from the same database, bucket and state.
# Environment: LFX_DEV_DIR, LFX_PG_PORT, LFX_NATS_PORT ... as for scripts/services.sh.
set -euo pipefail

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_DIR="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd -P)"
cd "$REPO_DIR"

DEMO_DB=lfx_v1_demo
BUCKET=v1-objects-demo
STATE_ID=demo
CONFIG=tap-configs/demo.toml
FIXTURES=tests/fixtures/singer

if [[ -t 1 ]]; then
    BOLD=$'\033[1m' DIM=$'\033[2m' RESET=$'\033[0m'
else
    BOLD='' DIM='' RESET=''
fi
banner() { printf '\n%s==> %s%s\n' "$BOLD" "$*" "$RESET"; }
note() { printf '%s    %s%s\n' "$DIM" "$*" "$RESET"; }
run() { # print a command, then run it
    printf '%s$ %s%s\n' "$DIM" "$*" "$RESET"
    "$@"
}
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- services ---
banner "Starting the local services (PostgreSQL, NATS JetStream, moto)"
note "first run: installs nats-server and moto into .tools/ (about a minute)"
ENV_FILE="$(scripts/services.sh up | tail -n1)"
[[ -f "$ENV_FILE" ]] || die "scripts/services.sh up did not print its env file"
# shellcheck disable=SC1090
source "$ENV_FILE"
note "environment: $ENV_FILE"

# psql quietly: no NOTICEs for DROP ... IF EXISTS.
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
PSQL="$(command -v psql || true)"
[[ -n "$PSQL" ]] || PSQL="$LFX_PG_BIN/psql"
[[ -x "$PSQL" ]] || die "psql not found (apt-get install postgresql-client)"

# ---------------------------------------------------------------- database ---
banner "Loading the sample v1 database '$DEMO_DB'"
ADMIN_URL="$DATABASE_URL"
DEMO_URL="${DATABASE_URL%/*}/$DEMO_DB"
"$PSQL" "$ADMIN_URL" -v ON_ERROR_STOP=1 -q -c "DROP DATABASE IF EXISTS $DEMO_DB WITH (FORCE)"
"$PSQL" "$ADMIN_URL" -v ON_ERROR_STOP=1 -q -c "CREATE DATABASE $DEMO_DB"
"$PSQL" "$DEMO_URL" -v ON_ERROR_STOP=1 -q -f "$FIXTURES/lfx_v1_seed.sql" >/dev/null
for table in project__c community__c collaboration__c; do
    note "platform.$table: $("$PSQL" "$DEMO_URL" -Atc "SELECT count(*) FROM platform.$table") rows"
done
# lfx-sync reads the database named by DATABASE_URL (demo.toml: url = "\${DATABASE_URL}").
export DATABASE_URL="$DEMO_URL"

# ------------------------------------------------------------------- build ---
banner "Building lfx-sync (release)"
note "the first build takes a few minutes; later ones are quick"
cargo build --release --bin lfx-sync
LFX_SYNC="${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/lfx-sync"
[[ -x "$LFX_SYNC" ]] || die "$LFX_SYNC was not built"
lfx_sync() { run "$LFX_SYNC" "$@"; }

# ------------------------------------------------------------- KV bucket ---
# Talks the NATS client protocol over a plain socket (python3 standard library
# only), so the demo needs no `nats` CLI:
#   delete-bucket BUCKET    remove the bucket's stream KV_<BUCKET>, if any
#   delete-stream STREAM    remove a stream, if any
#   get BUCKET KEY...       print each key's latest entry (JetStream direct get)
#   publish PREFIX FILE     publish each line of FILE (a wal-listener event) to
#                           PREFIX.<schema>_<table>, as wal-listener does
nats_tool() {
    python3 - "$NATS_URL" "$@" <<'PY'
import json, socket, sys
from urllib.parse import urlsplit

url = urlsplit(sys.argv[1])
command, bucket, keys = sys.argv[2], sys.argv[3], sys.argv[4:]


class Nats:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        self.sid = 0
        self.read_line()  # INFO {...}
        self.send(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                  b'"no_responders":true,"protocol":1,"lang":"python-demo","version":"0"}\r\n')

    def send(self, data):
        self.sock.sendall(data)

    def read_line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("NATS closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def read_bytes(self, n):
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise SystemExit("NATS closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def request(self, subject, payload):
        """Publishes `payload` and returns (status, headers, body) of the reply."""
        self.sid += 1
        inbox = f"_INBOX.demo.{self.sid}"
        body = payload.encode()
        self.send(f"SUB {inbox} {self.sid}\r\nUNSUB {self.sid} 1\r\n".encode()
                  + f"PUB {subject} {inbox} {len(body)}\r\n".encode() + body + b"\r\n")
        while True:
            line = self.read_line()
            op = line.split(" ", 1)[0]
            if op == "PING":
                self.send(b"PONG\r\n")
            elif op == "-ERR":
                raise SystemExit(f"NATS error: {line}")
            elif op == "MSG":
                parts = line.split()
                return None, {}, self.read_bytes(int(parts[-1]))
            elif op == "HMSG":
                parts = line.split()
                hlen, total = int(parts[-2]), int(parts[-1])
                raw = self.read_bytes(total)
                head, body = raw[:hlen].decode(), raw[hlen:]
                lines = head.split("\r\n")
                status = lines[0][len("NATS/1.0"):].strip() or None
                headers = dict(l.split(":", 1) for l in lines[1:] if ":" in l)
                return status, {k.strip(): v.strip() for k, v in headers.items()}, body
            # +OK, PONG, INFO updates: nothing to do


nats = Nats(url.hostname or "127.0.0.1", url.port or 4222)

if command == "delete-stream":
    _, _, body = nats.request(f"$JS.API.STREAM.DELETE.{bucket}", "")
    reply = json.loads(body or b"{}")
    if not reply.get("success") and reply.get("error", {}).get("err_code") != 10059:
        raise SystemExit(f"cannot delete stream {bucket}: {reply}")
elif command == "publish":
    with open(keys[0], encoding="utf-8") as events:
        for line in events:
            line = line.rstrip("\n")
            try:
                event = json.loads(line)
                subject = f"{bucket}.{event['schema']}_{event['table']}"
            except (ValueError, KeyError):
                subject = f"{bucket}.unparseable"
            _, _, body = nats.request(subject, line)
            reply = json.loads(body or b"{}")
            if "error" in reply:
                raise SystemExit(f"cannot publish to {subject}: {reply}")
            print(f"    {subject}: {line[:96]}{'…' if len(line) > 96 else ''}")
elif command == "delete-bucket":
    _, _, body = nats.request(f"$JS.API.STREAM.DELETE.KV_{bucket}", "")
    reply = json.loads(body or b"{}")
    if reply.get("success"):
        print(f"    deleted bucket {bucket}")
    elif reply.get("error", {}).get("err_code") == 10059:  # stream not found
        print(f"    bucket {bucket} does not exist yet")
    else:
        raise SystemExit(f"cannot delete bucket {bucket}: {reply}")
elif command == "get":
    for key in keys:
        subject = f"$KV.{bucket}.{key}"
        status, headers, body = nats.request(
            f"$JS.API.DIRECT.GET.KV_{bucket}", json.dumps({"last_by_subj": subject}))
        print(f"\n  {key}")
        if status:
            print(f"    ({status})")
            continue
        op = headers.get("KV-Operation", "PUT")
        print(f"    revision {headers.get('Nats-Sequence', '?')}, "
              f"written {headers.get('Nats-Time-Stamp', '?')}, operation {op}")
        try:
            value = json.loads(body)
        except ValueError:
            print(f"    (not JSON: {len(body)} bytes)")
            continue
        for line in json.dumps(value, indent=2, ensure_ascii=False).splitlines():
            print(f"    {line}")
else:
    raise SystemExit(f"unknown command {command}")
PY
}

STATE="file://$LFX_DEV_DIR/demo-state"

banner "Starting from an empty bucket '$BUCKET' and an empty state '$STATE_ID'"
nats_tool delete-bucket "$BUCKET"
lfx_sync state clear --state "$STATE" --state-id "$STATE_ID"
note "state: $STATE (Meltano's layout: <dir>/$STATE_ID/state.json)"

BACKFILL=(backfill --config "$CONFIG" --bucket "$BUCKET" --create-buckets
    --state "$STATE" --state-id "$STATE_ID" --log-level warn)

# ------------------------------------------------------------------ step 1 ---
banner "Step 1: full backfill of the three platform tables"
note "every row becomes one entry <stream>.<primary key>; all are 'created'"
lfx_sync "${BACKFILL[@]}" --full

# ------------------------------------------------------------------ step 2 ---
banner "Step 2: changes in v1, then an incremental backfill"
note "$FIXTURES/lfx_v1_update.sql: 3 projects archived, 1 committee soft-deleted,"
note "1 membership role changed, 2 memberships added, 1 membership hard-deleted"
"$PSQL" "$DEMO_URL" -v ON_ERROR_STOP=1 -q -f "$FIXTURES/lfx_v1_update.sql" >/dev/null
note "the incremental run reads rows at or after each stream's bookmark (>=):"
note "changed rows are 'updated'/'created', rows equal to the bookmark come back 'unchanged'"
lfx_sync "${BACKFILL[@]}"

# ------------------------------------------------------------------ step 3 ---
banner "Step 3: a second full backfill over the filled bucket"
note "the guard compares each row's lastmodifieddate with the stored entry:"
note "nothing is newer, so every row is 'unchanged' and nothing is rewritten"
lfx_sync "${BACKFILL[@]}" --full

# ------------------------------------------------------------------ step 4 ---
banner "Step 4: the stored bookmarks"
lfx_sync state show --state "$STATE" --state-id "$STATE_ID"

# ------------------------------------------------------------------ step 5 ---
banner "Step 5: a few entries of bucket '$BUCKET'"
note "project 3 (archived in step 2), committee 5 (soft-deleted in v1: isdeleted = true),"
note "and a membership added in step 2 (key: community__c-contact__c)"
nats_tool get "$BUCKET" \
    platform-project__c.3 \
    platform-community__c.5 \
    platform-collaboration__c.a0R5G0000000000001-0035G00000NEW00001

# ------------------------------------------------------------------ step 6 ---
banner "Step 6: live changes from wal-listener, applied by 'lfx-sync sync'"
note "the daemon consumes stream wal_listener (as wal-listener publishes it) into '$BUCKET',"
note "keyed as tap-configs/lfx-v1-postgres.toml says: <schema>-<table>.<sfid>"
OPS_PORT="${LFX_DEMO_OPS_PORT:-58080}"
nats_tool delete-stream wal_listener
nats_tool delete-stream lfx-sync-dlq
SYNC_LOG="$LFX_DEV_DIR/demo-sync.log"
SYNC=("$LFX_SYNC" sync --streams-config tap-configs/lfx-v1-postgres.toml --bucket "$BUCKET"
    --create-streams --bind "127.0.0.1:$OPS_PORT" --log-level warn)
printf '%s$ %s &%s\n' "$DIM" "${SYNC[*]}" "$RESET"
"${SYNC[@]}" 2>"$SYNC_LOG" &
SYNC_PID=$!
trap 'kill "$SYNC_PID" 2>/dev/null || true' EXIT
ops_get() { # print an ops endpoint's body; fails unless it answers 200
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode(), end="")' \
        "http://127.0.0.1:$OPS_PORT$1" 2>/dev/null
}
for _ in $(seq 100); do ops_get /readyz >/dev/null && break; sleep 0.1; done
ops_get /readyz >/dev/null || die "lfx-sync sync did not get ready (log: $SYNC_LOG)"
note "ready: http://127.0.0.1:$OPS_PORT/readyz; publishing 7 events:"
note "a project inserted, updated, then a late event older than the update; a committee"
note "inserted then deleted; a membership inserted; and one line that is not JSON"
EVENTS="$LFX_DEV_DIR/demo-wal-events.jsonl"
cat >"$EVENTS" <<'JSONL'
{"id":"8c6f0b52-0001-4c1e-9f00-000000000001","schema":"salesforce","table":"project__c","action":"INSERT","data":{"id":9001,"sfid":"a0P5G00000DEMO0001","name":"Demo Foundation","status__c":"Active","annual_budget__c":"250000.00","systemmodstamp":"2024-07-01T10:00:00Z"},"dataOld":{},"commitTime":"2024-07-01T10:00:00.120391Z"}
{"id":"8c6f0b52-0001-4c1e-9f00-000000000002","schema":"salesforce","table":"project__c","action":"UPDATE","data":{"id":9001,"sfid":"a0P5G00000DEMO0001","name":"Demo Foundation","status__c":"Archived","annual_budget__c":"250000.00","systemmodstamp":"2024-07-01T11:00:00Z"},"dataOld":{},"commitTime":"2024-07-01T11:00:00.5Z"}
{"id":"8c6f0b52-0001-4c1e-9f00-000000000003","schema":"salesforce","table":"project__c","action":"UPDATE","data":{"id":9001,"sfid":"a0P5G00000DEMO0001","name":"Demo Foundation (late)","status__c":"Active","annual_budget__c":"1.00","systemmodstamp":"2024-07-01T09:00:00Z"},"dataOld":{},"commitTime":"2024-07-01T09:00:00.9Z"}
{"id":"8c6f0b52-0001-4c1e-9f00-000000000004","schema":"platform","table":"community__c","action":"INSERT","data":{"id":9002,"sfid":"a0R5G00000DEMO0001","name":"Demo Board","project__c":"a0P5G00000DEMO0001","systemmodstamp":"2024-07-01T10:05:00Z"},"dataOld":{},"commitTime":"2024-07-01T10:05:00Z"}
{"id":"8c6f0b52-0001-4c1e-9f00-000000000005","schema":"platform","table":"community__c","action":"DELETE","data":{},"dataOld":{"id":9002,"sfid":"a0R5G00000DEMO0001","name":"Demo Board","project__c":"a0P5G00000DEMO0001","systemmodstamp":"2024-07-01T10:05:00Z"},"commitTime":"2024-07-01T12:00:00Z"}
{"id":"8c6f0b52-0001-4c1e-9f00-000000000006","schema":"platform","table":"collaboration__c","action":"INSERT","data":{"sfid":"a0Q5G00000DEMO0001","community__c":"a0R5G00000DEMO0001","contact__c":"0035G00000DEMO0001","role__c":"Chair","lastmodifieddate":"2024-07-01T10:10:00Z"},"dataOld":{},"commitTime":"2024-07-01T10:10:00Z"}
this is not JSON
JSONL
nats_tool publish wal_listener "$EVENTS"
for _ in $(seq 100); do
    done_count=$(ops_get /metrics | awk '/^lfx_sync_messages_total/ {n += $NF} END {print n + 0}')
    [[ "$done_count" -ge 7 ]] && break
    sleep 0.1
done
note "the project holds the update (the late event was skipped: older than the entry),"
note "the committee is soft-deleted (_sdc_deleted_at), the membership is new:"
nats_tool get "$BUCKET" \
    salesforce-project__c.a0P5G00000DEMO0001 \
    platform-community__c.a0R5G00000DEMO0001 \
    platform-collaboration__c.a0Q5G00000DEMO0001
note "what the daemon counted (/metrics); the line that was not JSON went to stream lfx-sync-dlq:"
ops_get /metrics | grep -E '^lfx_sync_(messages|dead_letters)_total' | sed 's/^/    /'
kill -TERM "$SYNC_PID"
wait "$SYNC_PID" || die "lfx-sync sync did not stop cleanly (log: $SYNC_LOG)"
trap - EXIT
note "SIGTERM: the daemon finished what it held and exited 0; its log: $SYNC_LOG"

banner "Done"
note "services keep running: 'just services-down' stops them"
note "re-run with 'just demo'; the binary is $LFX_SYNC (try '$LFX_SYNC backfill --help')"
