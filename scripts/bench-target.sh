#!/usr/bin/env bash
# target-nats-kv throughput and memory (`just bench-target [ROWS]`).
#
# Records a real tap-postgres FULL_TABLE stream of ROWS project__c-shaped rows
# (tests/fixtures/singer/lfx_v1_bench_200k.sql, parametrized) once, then replays
# the same file:
#
#   target-jsonl     PyPI's target-jsonl writing local files: the baseline
#   empty bucket     target-nats-kv into a new, empty bucket
#   filled bucket    target-nats-kv again over the filled bucket (guard read path)
#
# Usage: scripts/bench-target.sh [ROWS]     (default 200000)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
cd "$REPO_DIR"
ROWS="${1:-200000}"
[[ "$ROWS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [ROWS]" >&2; exit 2; }
FIXTURES=tests/fixtures/singer
TOOLS="${LFX_TOOLS_DIR:-$REPO_DIR/.tools}"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

TIME=/usr/bin/time
if [[ ! -x "$TIME" ]]; then
    [[ "$(id -u)" == 0 ]] || die "$TIME is missing: install GNU time (sudo apt-get install time)"
    apt-get install -y -q time >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q time >/dev/null; }
fi

log "starting the local services"
ENV_FILE="$(scripts/services.sh up | tail -n1)"
# shellcheck disable=SC1090
source "$ENV_FILE"
export PGOPTIONS="-c client_min_messages=warning"

log "installing Meltano's tap-postgres and target-jsonl (one-time)"
scripts/meltano.sh install
TAP="$REPO_DIR/meltano/.meltano/extractors/tap-postgres/venv/bin/tap-postgres"
if [[ ! -x "$TOOLS/target-jsonl/bin/target-jsonl" ]]; then
    python3 -m venv "$TOOLS/target-jsonl"
    "$TOOLS/target-jsonl/bin/pip" install --quiet --disable-pip-version-check target-jsonl
fi

DB=lfx_bench_target
DB_URL="${DATABASE_URL%/*}/$DB"
WORK="$LFX_DEV_DIR/bench-target"
STREAM="$WORK/tap-postgres-$ROWS.singer.jsonl"
mkdir -p "$WORK"
if [[ ! -s "$STREAM" ]]; then
    log "recording a $ROWS-record tap-postgres stream"
    psql "$DATABASE_URL" -q -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
    psql "$DB_URL" -v ON_ERROR_STOP=1 -q -f "$FIXTURES/lfx_v1_seed.sql" >/dev/null
    sed "s/generate_series(1, 200000)/generate_series(1, $ROWS)/" "$FIXTURES/lfx_v1_bench_200k.sql" |
        psql "$DB_URL" -v ON_ERROR_STOP=1 -q >/dev/null
    host_port="${DATABASE_URL#*@}"; host_port="${host_port%%/*}"
    cat >"$WORK/tap.json" <<JSON
{"host": "${host_port%%:*}", "port": ${host_port##*:}, "user": "postgres", "password": "unused",
 "database": "$DB", "filter_schemas": ["bench"]}
JSON
    "$TAP" --config "$WORK/tap.json" --discover >"$WORK/catalog.json" 2>/dev/null
    python3 - "$WORK/catalog.json" <<'PY'
import json, sys
path = sys.argv[1]
catalog = json.load(open(path))
for stream in catalog["streams"]:
    for entry in stream["metadata"]:
        if entry["breadcrumb"] == []:
            entry["metadata"]["selected"] = True
            entry["metadata"]["replication-method"] = "FULL_TABLE"
json.dump(catalog, open(path, "w"))
PY
    "$TAP" --config "$WORK/tap.json" --catalog "$WORK/catalog.json" >"$STREAM" 2>"$WORK/tap.log"
    psql "$DATABASE_URL" -q -c "DROP DATABASE IF EXISTS $DB"
fi
records=$(grep -c '"type":"RECORD"' "$STREAM" || true)
[[ "$records" == "$ROWS" ]] || die "the recorded stream has $records records, expected $ROWS (delete $STREAM to re-record)"
echo "    $STREAM: $records records, $(du -h "$STREAM" | cut -f1)"

log "building target-nats-kv (release)"
cargo build --release --quiet --bin target-nats-kv --bin lfx-sync
BIN="$REPO_DIR/target/release"

# measure NAME COMMAND...: wall seconds and peak RSS (KB) into $secs/$rss
measure() {
    local out="$WORK/$1.out" err="$WORK/$1.time"
    shift
    "$TIME" -o "$err" -f '%e %M' "$@" <"$STREAM" >"$out" 2>"$WORK/last.stderr" || {
        tail -20 "$WORK/last.stderr" >&2
        die "$* failed"
    }
    read -r secs rss <"$err"
}

log "baseline: target-jsonl"
rm -rf "$WORK/jsonl" && mkdir -p "$WORK/jsonl"
echo '{"destination_path": "'"$WORK/jsonl"'", "do_timestamp_file": false}' >"$WORK/jsonl.json"
measure jsonl "$TOOLS/target-jsonl/bin/target-jsonl" --config "$WORK/jsonl.json"
base_secs=$secs base_rss=$rss

BUCKET="bench_target_$$_$(date +%s)"
echo '{"url": "'"$NATS_URL"'", "bucket": "'"$BUCKET"'"}' >"$WORK/nats.json"

log "target-nats-kv into an empty bucket"
measure empty "$BIN/target-nats-kv" --config "$WORK/nats.json" --create-buckets
empty_secs=$secs empty_rss=$rss
log "target-nats-kv over the filled bucket"
measure filled "$BIN/target-nats-kv" --config "$WORK/nats.json"
filled_secs=$secs filled_rss=$rss

python3 - "$ROWS" "$base_secs" "$base_rss" "$empty_secs" "$empty_rss" "$filled_secs" "$filled_rss" <<'PY'
import sys
rows = int(sys.argv[1])
runs = [("target-jsonl (baseline)", float(sys.argv[2]), int(sys.argv[3])),
        ("target-nats-kv, empty bucket", float(sys.argv[4]), int(sys.argv[5])),
        ("target-nats-kv, filled bucket", float(sys.argv[6]), int(sys.argv[7]))]
base = rows / max(runs[0][1], 1e-9)
print(f"\n{'run':<32}{'records':>9}{'seconds':>9}{'records/s':>11}{'peak RSS MB':>13}{'vs baseline':>13}")
for name, secs, rss in runs:
    rate = rows / max(secs, 1e-9)
    print(f"{name:<32}{rows:>9}{secs:>9.2f}{rate:>11.0f}{rss/1024:>13.1f}{rate/base:>12.1f}x")
print("\ntargets: >= 50,000 records/s into an empty bucket, and >= 5x target-jsonl;"
      " the Python target-nats-kv it replaces managed about 1,800 records/s here")
PY
