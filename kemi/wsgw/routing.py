"""Where a dialled number goes. Edit this module to change the dial plan.

This is the one place a SIP engineer changes routing; it is plain Python, has
no protocol code, and is unit-tested in tests/unit/test_routing.py. `route()`
returns a RouteDecision for what the agent dialled:

- `refused`: not called at all (e.g. premium-rate numbers); the browser gets
  `callFailed` with `code`.
- `local`: a DN of this gateway (embedded mode). The INVITE still goes out as
  real SIP and comes back in through the gateway's own SIP port, so both legs
  are visible on the wire.
- `upstream`: the PBX in GW_UPSTREAM.
- `trunk`: a prefix rule with its own destination.

Rules are checked in order; the first prefix that matches wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import GatewayConfig


@dataclass(frozen=True)
class PrefixRule:
    prefix: str
    strip: int = 0  # digits removed from the front before sending
    prepend: str = ""  # digits added after stripping
    destination: str = "upstream"  # "upstream" or a SIP URI such as "sip:10.0.0.5:5060"


@dataclass(frozen=True)
class RouteDecision:
    kind: str  # "local" | "upstream" | "trunk" | "refused"
    number: str = ""  # the user part to put in the Request-URI
    ruri: str = ""
    nexthop: str = ""  # destination URI for tm ("" = Request-URI host)
    code: int = 0  # for refused
    reason: str = ""


# Example dial plan; adjust for your site.
REFUSED_PREFIXES: tuple[str, ...] = ("0900", "00900")  # premium rate
PREFIX_RULES: tuple[PrefixRule, ...] = (
    # "0" for an outside line: 0 + number -> the number, to the upstream PBX.
    PrefixRule(prefix="0", strip=1, destination="upstream"),
)


# The echo test: calling it plays your own audio back (GW_ECHO_URI; `make run` starts one).
ECHO_EXTENSION = "9196"


def route(dialled: str, config: GatewayConfig, rules: tuple[PrefixRule, ...] = PREFIX_RULES,
          refused: tuple[str, ...] = REFUSED_PREFIXES) -> RouteDecision:
    """Decide where `dialled` (already validated by sip_headers.validate_dn) goes."""
    if dialled == ECHO_EXTENSION and config.echo_uri:
        if "@" in config.echo_uri:
            return RouteDecision(kind="trunk", number=dialled, ruri=config.echo_uri,
                                 nexthop="sip:" + config.echo_uri.split("@", 1)[-1])
        return RouteDecision(kind="trunk", number=dialled, ruri=_with_user(config.echo_uri, dialled),
                             nexthop=config.echo_uri)
    if any(dialled.startswith(p) for p in refused):
        return RouteDecision(kind="refused", number=dialled, code=403, reason="Forbidden by dial plan")
    for rule in rules:
        if dialled.startswith(rule.prefix) and len(dialled) > len(rule.prefix):
            number = rule.prepend + dialled[rule.strip:]
            if rule.destination == "upstream":
                if config.upstream is None:
                    return RouteDecision(kind="refused", number=number, code=404, reason="No upstream for outside lines")
                return _upstream(number, config)
            return RouteDecision(kind="trunk", number=number, ruri=_with_user(rule.destination, number),
                                 nexthop=rule.destination)
    if config.upstream is not None:
        return _upstream(dialled, config)
    # Embedded mode: our own DNs, through our own SIP port.
    own = f"sip:{config.listen_ip}:{config.sip_port}"
    return RouteDecision(kind="local", number=dialled, ruri=_with_user(own, dialled), nexthop=own)


def _upstream(number: str, config: GatewayConfig) -> RouteDecision:
    assert config.upstream is not None
    return RouteDecision(kind="upstream", number=number, ruri=f"sip:{number}@{config.upstream.hostport}",
                         nexthop=str(config.upstream))


def _with_user(uri: str, user: str) -> str:
    scheme, _, rest = uri.partition(":")
    return f"{scheme}:{user}@{rest}"
