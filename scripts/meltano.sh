#!/usr/bin/env bash
# Meltano for the project in meltano/: installs Meltano (its own virtualenv under
# .tools/, its pins conflict with the taps') and the plugins of meltano/meltano.yml.
# Works offline from Meltano Hub: the plugins are defined by hand.
#
#   scripts/meltano.sh install     # idempotent
#   scripts/meltano.sh run ARGS    # meltano ARGS in meltano/, with target-nats-kv on PATH
set -euo pipefail

REPO_DIR="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd -P)"
TOOLS_DIR="${LFX_TOOLS_DIR:-$REPO_DIR/.tools}"
VENV="$TOOLS_DIR/meltano"
PROJECT="$REPO_DIR/meltano"

log() { printf 'meltano.sh: %s\n' "$*" >&2; }

install() {
    if [[ ! -x "$VENV/bin/meltano" ]]; then
        log "installing Meltano into $VENV (one-time)"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet --disable-pip-version-check meltano
    fi
    # `meltano install` creates each tap's virtualenv under meltano/.meltano;
    # skip it when every extractor is already there.
    local missing=0
    for tap in tap-postgres tap-dynamodb; do
        [[ -x "$PROJECT/.meltano/extractors/$tap/venv/bin/$tap" ]] || missing=1
    done
    if ((missing)); then
        log "installing the taps of meltano/meltano.yml"
        (cd "$PROJECT" && MELTANO_STATE_BACKEND_URI="${MELTANO_STATE_BACKEND_URI:-file://$PROJECT/.meltano/state}" \
            "$VENV/bin/meltano" install >&2)
    fi
}

case "${1:-}" in
    install) install ;;
    run)
        shift
        install
        # A built target-nats-kv: release if present, else debug.
        for dir in "$REPO_DIR/target/release" "$REPO_DIR/target/debug"; do
            if [[ -x "$dir/target-nats-kv" ]]; then PATH="$dir:$PATH"; break; fi
        done
        cd "$PROJECT"
        exec "$VENV/bin/meltano" "$@"
        ;;
    *) echo "usage: $0 install | run MELTANO-ARGS..." >&2; exit 2 ;;
esac
