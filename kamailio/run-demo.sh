#!/usr/bin/env bash
# `make run`: the embedded default. Starts rtpengine (userspace, our own config) and a
# SIPp echo peer for the echo test extension 9196, then the gateway in the foreground.
# Ctrl-C stops all three (only the processes started here, by PID).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export GW_WS_PORT="${GW_WS_PORT:-8080}"
export GW_RUN_DIR="${GW_RUN_DIR:-$ROOT/.run/gw-$GW_WS_PORT}"
export GW_MEDIA="${GW_MEDIA:-rtpengine}"
export GW_RTPENGINE="${GW_RTPENGINE:-udp:127.0.0.1:2223}"
ECHO_SIP_PORT="${GW_ECHO_SIP_PORT:-5099}"
ECHO_MEDIA_PORT="${GW_ECHO_MEDIA_PORT:-6100}"
export GW_ECHO_URI="${GW_ECHO_URI:-sip:9196@127.0.0.1:$ECHO_SIP_PORT}"
mkdir -p "$GW_RUN_DIR"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

if [ "$GW_MEDIA" = rtpengine ]; then
    ng="${GW_RTPENGINE#udp:}"
    cat > "$GW_RUN_DIR/rtpengine.conf" <<CONF
[rtpengine]
table = -1
interface = 127.0.0.1
listen-ng = $ng
port-min = 30000
port-max = 30999
foreground = true
log-stderr = true
log-level = 5
CONF
    /usr/bin/rtpengine --config-file="$GW_RUN_DIR/rtpengine.conf" >"$GW_RUN_DIR/rtpengine.log" 2>&1 &
    pids+=($!)
    echo "rtpengine (pid $!) on $ng, log $GW_RUN_DIR/rtpengine.log"
fi

# The echo peer: answers any INVITE and sends the received RTP back.
sipp -sn uas -rtp_echo -i 127.0.0.1 -p "$ECHO_SIP_PORT" -mp "$ECHO_MEDIA_PORT" -nostdin -bg \
    -trace_err -error_file "$GW_RUN_DIR/echo-errors.log" >/dev/null 2>&1 || true
echo_pid=$(pgrep -n -f "sipp -sn uas -rtp_echo -i 127.0.0.1 -p $ECHO_SIP_PORT" || true)
[ -n "$echo_pid" ] && pids+=("$echo_pid") && echo "echo test 9196 -> sipp (pid $echo_pid) on 127.0.0.1:$ECHO_SIP_PORT"

echo "agent page: http://${GW_LISTEN_IP:-127.0.0.1}:$GW_WS_PORT/  (register 5001 / agent5001, call 9196 for an echo)"
"$ROOT/kamailio/run-gateway.sh" "$@"
