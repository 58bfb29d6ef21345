#!/usr/bin/env bash
# Start the gateway in the foreground with the configuration taken from GW_*
# environment variables (documented in README.md). The KEMI Python reads the same
# variables; this script only turns the listening sockets and paths into Kamailio
# command-line options.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

export GW_LISTEN_IP="${GW_LISTEN_IP:-127.0.0.1}"
export GW_WS_PORT="${GW_WS_PORT:-8080}"
export GW_SIP_PORT="${GW_SIP_PORT:-5060}"
export GW_UPSTREAM="${GW_UPSTREAM:-}"
export GW_SUBSCRIBERS="${GW_SUBSCRIBERS:-$ROOT/etc/subscribers.txt}"
export GW_CODECS="${GW_CODECS:-PCMU,PCMA,telephone-event}"
export GW_SIP_TIMEOUT="${GW_SIP_TIMEOUT:-8}"
export GW_RING_TIMEOUT="${GW_RING_TIMEOUT:-60}"
export GW_RUN_DIR="${GW_RUN_DIR:-$ROOT/.run/gw-$GW_WS_PORT}"
GW_SHM_MB="${GW_SHM_MB:-512}"
GW_PKG_MB="${GW_PKG_MB:-16}"
GW_CHILDREN="${GW_CHILDREN:-4}"
KAMAILIO="${KAMAILIO:-/usr/sbin/kamailio}"

mkdir -p "$GW_RUN_DIR"

# WSS (optional): a TLS listener on GW_WSS_PORT with GW_TLS_CERT / GW_TLS_KEY, or a
# self-signed pair made here on first use (fine for trying it, not for production).
TLS_ARGS=()
if [ -n "${GW_WSS_PORT:-}" ]; then
    if [ -z "${GW_TLS_CERT:-}" ] && [ -z "${GW_TLS_KEY:-}" ]; then
        GW_TLS_CERT="$GW_RUN_DIR/self-signed.crt"
        GW_TLS_KEY="$GW_RUN_DIR/self-signed.key"
        if [ ! -s "$GW_TLS_CERT" ] || [ ! -s "$GW_TLS_KEY" ]; then
            openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$GW_LISTEN_IP" \
                -keyout "$GW_TLS_KEY" -out "$GW_TLS_CERT" >/dev/null 2>&1
        fi
    elif [ ! -s "${GW_TLS_CERT:-}" ] || [ ! -s "${GW_TLS_KEY:-}" ]; then
        # Given paths are never overwritten: a typo must not replace a real certificate.
        echo "GW_TLS_CERT and GW_TLS_KEY must both name existing files" >&2
        exit 2
    fi
    cat > "$GW_RUN_DIR/tls.cfg" <<TLS
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
certificate = $GW_TLS_CERT
private_key = $GW_TLS_KEY

[client:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
TLS
    TLS_ARGS=(-l "tls:$GW_LISTEN_IP:$GW_WSS_PORT" -A WITH_TLS -A "GW_TLS_CFG=\"$GW_RUN_DIR/tls.cfg\"")
fi

exec "$KAMAILIO" \
    -f "$ROOT/kamailio/kamailio.cfg" \
    -DD -E \
    -m "$GW_SHM_MB" -M "$GW_PKG_MB" \
    -P "$GW_RUN_DIR/kamailio.pid" \
    -Y "$GW_RUN_DIR" \
    -l "udp:$GW_LISTEN_IP:$GW_SIP_PORT" \
    -l "tcp:$GW_LISTEN_IP:$GW_SIP_PORT" \
    -l "tcp:$GW_LISTEN_IP:$GW_WS_PORT" \
    -A "GW_KEMI_SCRIPT=\"$ROOT/kemi/gateway.py\"" \
    -A "GW_CHILDREN=$GW_CHILDREN" \
    -A "GW_SIP_RATE=${GW_SIP_RATE:-500}" \
    -A "GW_SIP_TIMEOUT_MS=$((GW_SIP_TIMEOUT * 1000))" \
    -A "GW_RING_TIMEOUT_MS=$(((GW_RING_TIMEOUT + 10) * 1000))" \
    "${TLS_ARGS[@]}" \
    "$@"
