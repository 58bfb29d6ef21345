#!/bin/sh
# nginx's entrypoint in docker-compose.yml: makes a self-signed certificate on first
# start, then hands over to the image's own /docker-entrypoint.sh (which renders
# templates/default.conf.template into conf.d/ and starts nginx).
#
# The certificate lives in the nginx-certs volume, so it survives container re-creation
# and browsers that accepted it once keep accepting it. To use a real certificate put
# wsgw.crt (full chain) and wsgw.key into that volume (or bind-mount a directory at
# $WSGW_CERT_DIR); existing files are never overwritten.
set -eu

dir="${WSGW_CERT_DIR:-/etc/nginx/certs}"
crt="$dir/wsgw.crt"
key="$dir/wsgw.key"
name="${WSGW_SERVER_NAME:-localhost}"

if [ -s "$crt" ] && [ -s "$key" ]; then
    echo "wsgw: using the certificate in $crt"
elif [ -e "$crt" ] || [ -e "$key" ]; then
    # One half of a pair: do not replace what may be a real certificate or key.
    echo "wsgw: $crt and $key must both exist (or both be absent for a self-signed pair)" >&2
    exit 2
else
    if ! command -v openssl >/dev/null 2>&1; then
        echo "wsgw: openssl is missing, cannot make the self-signed certificate" >&2
        exit 2
    fi
    # Browsers check subjectAltName, not CN. An IP address gets an IP entry.
    case "$name" in
        *[!0-9.]*) san="DNS:$name" ;;
        *) san="IP:$name" ;;
    esac
    [ "$name" = localhost ] || san="$san,DNS:localhost"
    mkdir -p "$dir"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=$name" \
        -addext "subjectAltName=$san,IP:127.0.0.1" \
        -keyout "$key.tmp" -out "$crt.tmp" 2>/dev/null
    chmod 0644 "$crt.tmp"
    mv "$key.tmp" "$key"
    mv "$crt.tmp" "$crt"
    echo "wsgw: made a self-signed certificate for $name ($san) in $crt, valid 825 days"
fi

exec "$@"
