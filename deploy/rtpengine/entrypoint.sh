#!/bin/sh
# Writes rtpengine's config from the environment and runs it in the foreground, like
# kamailio/run-demo.sh does outside a container. Our own config file, because Debian's
# /etc/rtpengine/rtpengine.conf expects the kernel forwarding table.
#
#   RTPENGINE_INTERFACE  address rtpengine binds and advertises in SDP. Empty: the
#                        address of the default route (this host's LAN/public address).
#                        Behind 1:1 NAT (cloud VMs) give "PRIVATE!PUBLIC".
#   RTPENGINE_NG         control (ng) address the gateway's GW_RTPENGINE points at
#   RTPENGINE_PORT_MIN / RTPENGINE_PORT_MAX   UDP media port range
set -eu

interface="${RTPENGINE_INTERFACE:-}"
if [ -z "$interface" ]; then
    # No packet is sent: the kernel only reports which source address it would use.
    interface=$(ip -4 route get 192.0.2.1 2>/dev/null \
        | awk '{ for (i = 1; i < NF; i++) if ($i == "src") { print $(i + 1); exit } }')
    if [ -z "$interface" ]; then
        echo "rtpengine: no default route to guess the media address from; set WSGW_RTP_IP" >&2
        exit 2
    fi
    echo "rtpengine: media address $interface (default route; set WSGW_RTP_IP to override)" >&2
fi

conf="${TMPDIR:-/tmp}/rtpengine-wsgw.conf"
cat > "$conf" <<CONF
[rtpengine]
table = -1
interface = $interface
listen-ng = ${RTPENGINE_NG:-127.0.0.1:2223}
port-min = ${RTPENGINE_PORT_MIN:-20000}
port-max = ${RTPENGINE_PORT_MAX:-29999}
foreground = true
log-stderr = true
log-level = ${RTPENGINE_LOG_LEVEL:-5}
CONF

exec "${RTPENGINE_BIN:-/usr/bin/rtpengine}" --config-file="$conf" "$@"
