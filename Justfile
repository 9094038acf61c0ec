# lfx-sync developer commands. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

# Show the recipes.
[private]
default:
    @just --list

# Start PostgreSQL, NATS (JetStream) and moto on loopback; prints the env file path.
services:
    scripts/services.sh up

# Stop the local services (their data folders are kept).
services-down:
    scripts/services.sh down

# Walk through a backfill of the sample v1 database into a local NATS KV bucket.
demo:
    scripts/demo.sh

# Formatting and lints, as CI runs them.
check:
    cargo fmt --check
    cargo clippy --all-targets -- -D warnings

# Unit and integration tests (starts the local services first); extra args go to cargo test.
test *ARGS:
    scripts/services.sh up >/dev/null
    cargo test --all-targets "$@"

# Measure backfill throughput and memory against a generated table of ROWS rows.
bench-backfill rows="200000":
    scripts/bench-backfill.sh "$1"

# Release build of the lfx-sync binary (target/release/lfx-sync).
build:
    cargo build --release

# Measure target-nats-kv against target-jsonl on a recorded tap-postgres stream of ROWS records.
bench-target rows="200000":
    scripts/bench-target.sh "$1"

# Meltano in meltano/ with target-nats-kv on PATH, e.g. `just meltano run tap-postgres target-nats-kv`.
meltano *ARGS:
    scripts/meltano.sh run "$@"

# Measure `lfx-sync sync`: EVENTS wal-listener events over KEYS keys, backlog and live at RATE events/s.
bench-sync events="100000" keys="10000" rate="10000":
    scripts/bench-sync.sh "$1" "$2" "$3"
