#!/usr/bin/env bash
# Backfill throughput and memory (`just bench-backfill [ROWS]`).
#
# Generates ROWS project__c-shaped rows in database `lfx_bench`, schema `bench`
# (the shape of tests/fixtures/singer/lfx_v1_bench_200k.sql; regenerated only
# when the row count differs), builds the release binary, then measures:
#
#   psql \copy        reading the same rows in the same order with psql: the
#                     rate PostgreSQL itself serves them at (the ceiling)
#   empty bucket      `lfx-sync backfill --full` into a new, empty bucket
#   filled bucket     the same again over the filled bucket: every row is read
#                     back by the guard and left unchanged
#
# Wall time and peak RSS come from /usr/bin/time, rows from the run's JSON report.
# The bucket is deleted at the end.
# Usage: scripts/bench-backfill.sh [ROWS]     (default 200000)
set -euo pipefail

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_DIR="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd -P)"
cd "$REPO_DIR"

ROWS="${1:-200000}"
[[ "$ROWS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [ROWS]  (a positive integer)" >&2; exit 2; }

BENCH_DB=lfx_bench
FIXTURES=tests/fixtures/singer
BASELINE_CSV=$FIXTURES/baseline/throughput-200k.csv

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ tools ---
TIME=/usr/bin/time
if [[ ! -x "$TIME" ]]; then
    if [[ "$(id -u)" == 0 ]]; then
        log "installing GNU time (apt-get install time)"
        apt-get install -y -q time >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null && apt-get install -y -q time >/dev/null; } ||
            die "apt-get install time failed"
    else
        die "$TIME is missing: install GNU time (sudo apt-get install time)"
    fi
fi
command -v python3 >/dev/null || die "python3 is needed to read the JSON reports"

log "starting the local services"
ENV_FILE="$(scripts/services.sh up | tail -n1)"
# shellcheck disable=SC1090
source "$ENV_FILE"
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" # no NOTICEs from DROP ... IF EXISTS
PSQL="$(command -v psql || true)"
[[ -n "$PSQL" ]] || PSQL="$LFX_PG_BIN/psql"
[[ -x "$PSQL" ]] || die "psql not found (apt-get install postgresql-client)"

# ------------------------------------------------------------------- data ---
BENCH_URL="${DATABASE_URL%/*}/$BENCH_DB"
if [[ "$("$PSQL" "$DATABASE_URL" -Atc "SELECT count(*) FROM pg_database WHERE datname = '$BENCH_DB'")" == 0 ]]; then
    "$PSQL" "$DATABASE_URL" -v ON_ERROR_STOP=1 -q -c "CREATE DATABASE $BENCH_DB"
fi
have=none
if [[ "$("$PSQL" "$BENCH_URL" -Atc "SELECT to_regclass('bench.project__c') IS NOT NULL")" == t ]]; then
    have="$("$PSQL" "$BENCH_URL" -Atc "SELECT count(*) FROM bench.project__c")"
fi
if [[ "$have" != "$ROWS" ]]; then
    log "generating $ROWS rows in $BENCH_DB.bench.project__c"
    grep -q 'generate_series(1, 200000)' "$FIXTURES/lfx_v1_bench_200k.sql" ||
        die "$FIXTURES/lfx_v1_bench_200k.sql no longer has 'generate_series(1, 200000)'"
    # The bench table is created LIKE platform.project__c: load the seed first.
    "$PSQL" "$BENCH_URL" -v ON_ERROR_STOP=1 -q -f "$FIXTURES/lfx_v1_seed.sql" >/dev/null
    started=$SECONDS
    sed "s/generate_series(1, 200000)/generate_series(1, $ROWS)/" "$FIXTURES/lfx_v1_bench_200k.sql" |
        "$PSQL" "$BENCH_URL" -v ON_ERROR_STOP=1 -q >/dev/null
    echo "    done in $((SECONDS - started)) s"
else
    log "reusing $ROWS rows in $BENCH_DB.bench.project__c"
fi
echo "    table size: $("$PSQL" "$BENCH_URL" -Atc "SELECT pg_size_pretty(pg_table_size('bench.project__c'))")"

# ------------------------------------------------------------------ build ---
log "building lfx-sync (release; the first build takes a few minutes)"
cargo build --release --bin lfx-sync
LFX_SYNC="${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/lfx-sync"
[[ -x "$LFX_SYNC" ]] || die "$LFX_SYNC was not built"

# Removes a KV bucket (its stream KV_<bucket>) over the plain NATS protocol:
# a run's bucket holds about 1 KB per row, which adds up in $LFX_DEV_DIR/nats.
delete_bucket() { # BUCKET
    python3 - "$NATS_URL" "$1" <<'PY' || echo "bench: could not delete bucket $1" >&2
import json, socket, sys
from urllib.parse import urlsplit

url, bucket = urlsplit(sys.argv[1]), sys.argv[2]
sock = socket.create_connection((url.hostname or "127.0.0.1", url.port or 4222), timeout=30)
buf = b""
def line():
    global buf
    while b"\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("NATS closed the connection")
        buf += chunk
    l, buf = buf.split(b"\r\n", 1)
    return l.decode()
line()  # INFO
sock.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true,"protocol":1}\r\n'
             b"SUB _INBOX.bench 1\r\n"
             + f"PUB $JS.API.STREAM.DELETE.KV_{bucket} _INBOX.bench 0\r\n\r\n".encode())
while True:
    l = line()
    if l.startswith("PING"):
        sock.sendall(b"PONG\r\n")
    elif l.startswith("-ERR"):
        raise SystemExit(l)
    elif l.startswith("MSG") or l.startswith("HMSG"):
        n = int(l.split()[-1])
        while len(buf) < n + 2:
            buf += sock.recv(65536)
        reply = json.loads(buf[:n] or b"{}")
        if not reply.get("success") and reply.get("error", {}).get("err_code") != 10059:
            raise SystemExit(f"cannot delete bucket {bucket}: {reply}")
        break
PY
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lfx-bench.XXXXXX")"
BUCKET="bench-$(date +%Y%m%d%H%M%S)-$$"
trap 'delete_bucket "$BUCKET"; rm -rf "$WORK"' EXIT
cat >"$WORK/bench.toml" <<'EOF'
state_id = "bench"

[nats]
url = "${NATS_URL}"

[postgres]
url = "${DATABASE_URL}"

[[postgres.streams]]
schema = "bench"
table = "project__c"
replication_key = "lastmodifieddate"
EOF
export DATABASE_URL="$BENCH_URL"

# ------------------------------------------------------------------- runs ---
measure() { # NAME CMD... : runs CMD under /usr/bin/time; stdout -> $WORK/NAME.out
    local name="$1"
    shift
    if ! "$TIME" -f '%e %M' -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; then
        echo "bench: '$name' failed: $*" >&2
        tail -n 30 "$WORK/$name.err" >&2
        exit 1
    fi
}

COPY_SQL="\\copy (SELECT * FROM bench.project__c ORDER BY lastmodifieddate) TO '/dev/null'"
log "psql baseline: $COPY_SQL"
measure warmup "$PSQL" "$BENCH_URL" -v ON_ERROR_STOP=1 -c "$COPY_SQL" # fills the page cache
measure psql "$PSQL" "$BENCH_URL" -v ON_ERROR_STOP=1 -c "$COPY_SQL"
sed -n 's/^COPY \([0-9]*\)$/\1/p' "$WORK/psql.out" >"$WORK/psql.rows"

BACKFILL=("$LFX_SYNC" backfill --config "$WORK/bench.toml" --bucket "$BUCKET" --create-buckets
    --full --quiet --report json --log-level warn --state "file://$WORK/state")
log "backfill into the empty bucket $BUCKET"
measure empty "${BACKFILL[@]}"
log "backfill again over the filled bucket"
measure filled "${BACKFILL[@]}"

# ----------------------------------------------------------------- report ---
log "results ($ROWS rows, $(nproc) cores)"
python3 - "$WORK" "$ROWS" "$BASELINE_CSV" <<'PY'
import csv, json, os, sys

work, rows_wanted, baseline_csv = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def timing(name):
    seconds, kb = open(os.path.join(work, name + ".time")).read().split()[-2:]
    return float(seconds), int(kb) / 1024

def report(name):
    return json.loads(open(os.path.join(work, name + ".out")).read())

runs = []
psql_rows = open(os.path.join(work, "psql.rows")).read().strip()
runs.append(("psql \\copy (baseline)", int(psql_rows or 0), *timing("psql"), None))
for name, label in (("empty", "lfx-sync, empty bucket"), ("filled", "lfx-sync, filled bucket")):
    r = report(name)
    runs.append((label, r["totals"]["read"], *timing(name), r["totals"]))

base_rate = runs[0][1] / runs[0][2] if runs[0][2] > 0 else float("nan")
print(f"{'run':<26} {'rows':>9} {'seconds':>8} {'rows/s':>9} {'peak RSS MB':>12} {'vs psql':>8}")
for label, rows, secs, rss, _ in runs:
    rate = rows / secs if secs > 0 else float("inf")
    print(f"{label:<26} {rows:>9} {secs:>8.2f} {rate:>9.0f} {rss:>12.1f} {rate / base_rate:>7.2f}x")

print()
for label, _, _, _, totals in runs[1:]:
    counts = ", ".join(f"{k} {v}" for k, v in totals.items() if v and k != "read")
    print(f"{label}: {counts or 'nothing written'}")

empty_totals, filled_totals = runs[1][4], runs[2][4]
problems = []
if empty_totals["created"] != rows_wanted:
    problems.append(f"empty bucket: expected {rows_wanted} created, got {empty_totals['created']}")
if filled_totals["unchanged"] != rows_wanted:
    problems.append(f"filled bucket: expected {rows_wanted} unchanged, got {filled_totals['unchanged']}")
for p in problems:
    print(f"WARNING: {p}")

def verdict(ok):
    return "ok" if ok else "BELOW TARGET"

empty_rate = runs[1][1] / runs[1][2] if runs[1][2] else 0
filled_rate = runs[2][1] / runs[2][2] if runs[2][2] else 0
peak = max(runs[1][3], runs[2][3])
print("\ntargets")
print(f"  empty bucket  >= 50,000 rows/s : {empty_rate:>9,.0f}  {verdict(empty_rate >= 50_000)}")
print(f"  filled bucket >= 30,000 rows/s : {filled_rate:>9,.0f}  {verdict(filled_rate >= 30_000)}")
rss_note = "" if rows_wanted >= 1_000_000 else f"  (measured at {rows_wanted:,} rows; the target is for 1,000,000: just bench-backfill 1000000)"
print(f"  peak RSS < 100 MB at 1,000,000 rows : {peak:.1f} MB  {verdict(peak < 100)}{rss_note}")

# The pipeline lfx-sync replaces, measured on this kind of machine (2 cores) with
# 200,000 rows of the same shape: tests/fixtures/singer/baseline/.
try:
    by_mode = {}
    with open(baseline_csv) as f:
        for row in csv.DictReader(f):
            by_mode.setdefault(row["mode"], []).append(float(row["rec_per_s"]))
    print(f"\nfor context, the Singer pipeline on the same kind of machine ({baseline_csv}, 200,000 rows):")
    for mode, rates in by_mode.items():
        print(f"  {mode:<62} {sum(rates) / len(rates):>7,.0f} rows/s" + (f"  (mean of {len(rates)} runs)" if len(rates) > 1 else ""))
    print("  (target-jsonl writes local files: the Python target-nats-kv, which reads and")
    print("   writes NATS per record, can only be slower than the 'tap|target-jsonl' line)")
except OSError:
    pass
PY
