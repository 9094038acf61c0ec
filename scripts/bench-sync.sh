#!/usr/bin/env bash
# `lfx-sync sync` throughput and latency (`just bench-sync [EVENTS] [KEYS] [RATE]`).
#
# Builds release binaries and runs the ignored test `sync::bench_sync`
# (tests/it/sync.rs) against the local NATS, on a WAL stream, consumer and
# bucket of its own (deleted at the end):
#
#   baseline   publishing EVENTS wal-listener-shaped UPDATE events over KEYS
#              keys to JetStream, nothing consuming: the rate the stream
#              itself takes them at
#   backlog    `lfx-sync sync` started on those stored events: events/s
#              applied end to end (pulled, guarded write, acknowledged), and
#              its ratio to the baseline
#   live       EVENTS newer events published at RATE events/s while the daemon
#              runs: the event -> KV latency (JetStream arrival to the KV write
#              acknowledged) at p50/p99/p99.9, from the daemon's
#              lfx_sync_event_latency_seconds histogram
#
# Target: at least 10,000 events/s applied on a 2-core machine.
# Usage: scripts/bench-sync.sh [EVENTS] [KEYS] [RATE]   (default 100000 10000 10000)
# Environment: LFX_BENCH_DAEMON_ARGS adds flags to the daemon, e.g.
#   LFX_BENCH_DAEMON_ARGS="--workers 128 --max-in-flight 2048" just bench-sync
set -euo pipefail

SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_DIR="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd -P)"
cd "$REPO_DIR"

EVENTS="${1:-100000}"
KEYS="${2:-10000}"
RATE="${3:-10000}"
for n in "$EVENTS" "$KEYS" "$RATE"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [EVENTS] [KEYS] [RATE]  (positive integers)" >&2; exit 2; }
done
(( KEYS <= EVENTS )) || { echo "bench: KEYS ($KEYS) must not exceed EVENTS ($EVENTS)" >&2; exit 2; }

log() { printf '\n==> %s\n' "$*"; }

log "starting the local services"
ENV_FILE="$(scripts/services.sh up | tail -n1)"
# shellcheck disable=SC1090
source "$ENV_FILE"
# The test harness uses these instead of starting the services again.
export LFX_TEST_NATS_URL="$NATS_URL" LFX_TEST_DATABASE_URL="$DATABASE_URL"

log "building lfx-sync and the benchmark (release)"
cargo test --release --test it --no-run

log "running: $EVENTS events over $KEYS keys, live phase at $RATE events/s"
LFX_BENCH_EVENTS="$EVENTS" LFX_BENCH_KEYS="$KEYS" LFX_BENCH_RATE="$RATE" \
    cargo test --release --quiet --test it -- --ignored --exact sync::bench_sync --nocapture
