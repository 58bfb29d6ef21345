#!/bin/sh
# coturn's entrypoint in docker-compose.yml: turnserver.conf plus the TURN account from
# the environment. Without WSGW_TURN_PASSWORD only STUN is offered (no relaying), rather
# than a relay with a password written in the repo.
set -eu

if [ -n "${WSGW_TURN_PASSWORD:-}" ]; then
    set -- --user="${WSGW_TURN_USER:-agent}:${WSGW_TURN_PASSWORD}" "$@"
    echo "coturn: STUN and TURN (user ${WSGW_TURN_USER:-agent})" >&2
else
    set -- --stun-only "$@"
    echo "coturn: STUN only; set WSGW_TURN_PASSWORD to enable TURN" >&2
fi

exec "${TURNSERVER_BIN:-turnserver}" -c /etc/coturn/turnserver.conf "$@"
