"""wsgw.routing: the dial plan (where a dialled number goes)."""

from __future__ import annotations

import dataclasses

import pytest

from wsgw.config import GatewayConfig
from wsgw.routing import PREFIX_RULES, REFUSED_PREFIXES, PrefixRule, RouteDecision, route


@pytest.fixture
def embedded() -> GatewayConfig:
    cfg = GatewayConfig()
    assert cfg.embedded
    return cfg


@pytest.fixture
def upstream() -> GatewayConfig:
    cfg = GatewayConfig.from_env({"GW_UPSTREAM": "sip:127.0.0.1:5070"})
    assert not cfg.embedded
    return cfg


TRUNK = "sip:10.0.0.5:5060"
TRUNK_RULE = PrefixRule("9", strip=1, prepend="+49", destination=TRUNK)


# --- plain DNs ----------------------------------------------------------------------------------


def test_embedded_dn_is_local(embedded):
    assert route("5002", embedded) == RouteDecision(
        kind="local", number="5002", ruri="sip:5002@127.0.0.1:5060", nexthop="sip:127.0.0.1:5060")


def test_embedded_local_uses_listen_ip_and_sip_port():
    cfg = GatewayConfig.from_env({"GW_LISTEN_IP": "192.0.2.1", "GW_SIP_PORT": "5080"})
    decision = route("5002", cfg)
    assert decision.kind == "local"
    assert decision.ruri == "sip:5002@192.0.2.1:5080"
    assert decision.nexthop == "sip:192.0.2.1:5080"


def test_upstream_dn_goes_upstream(upstream):
    decision = route("5002", upstream)
    assert decision.kind == "upstream"
    assert decision.number == "5002"
    assert decision.ruri == "sip:5002@127.0.0.1:5070"
    assert decision.nexthop == "sip:127.0.0.1:5070"
    assert decision.code == 0


def test_upstream_nexthop_keeps_transport():
    cfg = GatewayConfig.from_env({"GW_UPSTREAM": "sip:pbx.example.com:5070;transport=tcp"})
    decision = route("5002", cfg)
    assert decision.kind == "upstream"
    assert decision.ruri == "sip:5002@pbx.example.com:5070"
    assert decision.nexthop == "sip:pbx.example.com:5070;transport=tcp"


def test_upstream_without_port():
    cfg = GatewayConfig.from_env({"GW_UPSTREAM": "sip:pbx.example.com"})
    decision = route("5002", cfg)
    assert decision.ruri == "sip:5002@pbx.example.com"
    assert decision.nexthop == "sip:pbx.example.com"


def test_decision_is_frozen(embedded):
    with pytest.raises(dataclasses.FrozenInstanceError):
        route("5002", embedded).kind = "trunk"  # type: ignore[misc]


# --- refused prefixes ---------------------------------------------------------------------------


@pytest.mark.parametrize("cfg_name", ["embedded", "upstream"])
@pytest.mark.parametrize("dialled", ["0900123", "00900123", "0900"])
def test_premium_rate_refused_403(request, cfg_name, dialled):
    decision = route(dialled, request.getfixturevalue(cfg_name))
    assert decision.kind == "refused"
    assert decision.code == 403
    assert decision.number == dialled
    assert decision.ruri == ""
    assert decision.nexthop == ""
    assert decision.reason


def test_default_dial_plan_contents():
    assert REFUSED_PREFIXES == ("0900", "00900")
    assert PREFIX_RULES == (PrefixRule(prefix="0", strip=1, destination="upstream"),)


def test_refused_checked_before_rules(upstream):
    # "0900..." also matches the outside-line rule "0"; refusal wins.
    assert route("0900123", upstream).kind == "refused"


def test_custom_refused_list(upstream):
    decision = route("1900555", upstream, refused=("1900",))
    assert (decision.kind, decision.code) == ("refused", 403)
    # With an empty refused list the premium number is an ordinary outside line.
    decision = route("0900123", upstream, refused=())
    assert decision.kind == "upstream"
    assert decision.number == "900123"


# --- outside line "0" ---------------------------------------------------------------------------


def test_outside_line_upstream_strips_zero(upstream):
    decision = route("012345", upstream)
    assert decision.kind == "upstream"
    assert decision.number == "12345"
    assert decision.ruri == "sip:12345@127.0.0.1:5070"
    assert decision.nexthop == "sip:127.0.0.1:5070"


def test_outside_line_embedded_refused_404(embedded):
    decision = route("012345", embedded)
    assert decision.kind == "refused"
    assert decision.code == 404
    assert decision.number == "12345"
    assert decision.ruri == ""
    assert decision.nexthop == ""


@pytest.mark.parametrize("cfg_name", ["embedded", "upstream"])
def test_number_equal_to_prefix_does_not_match_rule(request, cfg_name):
    cfg = request.getfixturevalue(cfg_name)
    decision = route("0", cfg)
    assert decision.kind == ("local" if cfg.embedded else "upstream")
    assert decision.number == "0"  # not stripped to ""


def test_number_equal_to_prefix_falls_through_to_next_rule(upstream):
    rules = (PrefixRule("55", strip=2, destination=TRUNK), PrefixRule("5", prepend="7", destination=TRUNK))
    decision = route("55", upstream, rules=rules)
    assert decision.kind == "trunk"
    assert decision.number == "755"


# --- custom rules and trunks --------------------------------------------------------------------


@pytest.mark.parametrize("cfg_name", ["embedded", "upstream"])
def test_trunk_rule(request, cfg_name):
    decision = route("912345", request.getfixturevalue(cfg_name), rules=(TRUNK_RULE,))
    assert decision == RouteDecision(kind="trunk", number="+4912345", ruri="sip:+4912345@10.0.0.5:5060",
                                     nexthop=TRUNK)


def test_trunk_uri_params_kept():
    rule = PrefixRule("9", strip=1, destination="sip:10.0.0.5:5060;transport=tcp")
    decision = route("9123", GatewayConfig(), rules=(rule,))
    assert decision.ruri == "sip:123@10.0.0.5:5060;transport=tcp"
    assert decision.nexthop == "sip:10.0.0.5:5060;transport=tcp"


def test_custom_rules_replace_default_rules(embedded):
    # With only the trunk rule, "012345" is no longer an outside line: a local DN in embedded mode.
    decision = route("012345", embedded, rules=(TRUNK_RULE,))
    assert decision.kind == "local"
    assert decision.ruri == "sip:012345@127.0.0.1:5060"


def test_number_not_matching_any_custom_rule(upstream):
    decision = route("5002", upstream, rules=(TRUNK_RULE,))
    assert decision.kind == "upstream"
    assert decision.ruri == "sip:5002@127.0.0.1:5070"


def test_first_matching_rule_wins(upstream):
    rules = (
        PrefixRule("9", strip=1, prepend="+49", destination=TRUNK),
        PrefixRule("91", strip=2, destination="sip:10.0.0.6:5060"),
    )
    decision = route("912345", upstream, rules=rules)
    assert decision.nexthop == TRUNK
    assert decision.number == "+4912345"


def test_first_matching_rule_wins_even_if_less_specific_later(upstream):
    rules = (
        PrefixRule("91", strip=2, destination="sip:10.0.0.6:5060"),
        PrefixRule("9", strip=1, prepend="+49", destination=TRUNK),
    )
    decision = route("912345", upstream, rules=rules)
    assert decision.kind == "trunk"
    assert decision.number == "2345"
    assert decision.ruri == "sip:2345@10.0.0.6:5060"
    assert decision.nexthop == "sip:10.0.0.6:5060"
    # A number the first rule does not match reaches the second.
    assert route("9812", upstream, rules=rules).nexthop == TRUNK


def test_upstream_rule_with_prepend(upstream):
    rules = (PrefixRule("8", strip=1, prepend="+33", destination="upstream"),)
    decision = route("8123", upstream, rules=rules)
    assert decision.kind == "upstream"
    assert decision.number == "+33123"
    assert decision.ruri == "sip:+33123@127.0.0.1:5070"
    assert decision.nexthop == "sip:127.0.0.1:5070"


def test_upstream_rule_in_embedded_mode_refused_404(embedded):
    rules = (PrefixRule("8", strip=1, prepend="+33", destination="upstream"),)
    decision = route("8123", embedded, rules=rules)
    assert (decision.kind, decision.code) == ("refused", 404)


def test_rule_without_strip_keeps_digits(upstream):
    rules = (PrefixRule("7", destination=TRUNK),)
    decision = route("7001", upstream, rules=rules)
    assert decision.number == "7001"
    assert decision.ruri == "sip:7001@10.0.0.5:5060"


def test_prefix_rule_defaults():
    rule = PrefixRule("0")
    assert (rule.strip, rule.prepend, rule.destination) == (0, "", "upstream")


# --- the echo test extension (GW_ECHO_URI) ---------------------------------------------------------

from wsgw.routing import ECHO_EXTENSION  # noqa: E402

ECHO_URI = "sip:9196@127.0.0.1:5099"


def test_echo_extension_is_9196():
    assert ECHO_EXTENSION == "9196"


@pytest.mark.parametrize("env", [{}, {"GW_UPSTREAM": "sip:127.0.0.1:5070"}])
def test_echo_extension_routes_to_gw_echo_uri(env):
    cfg = GatewayConfig.from_env({**env, "GW_ECHO_URI": ECHO_URI})
    assert route(ECHO_EXTENSION, cfg) == RouteDecision(
        kind="trunk", number="9196", ruri="sip:9196@127.0.0.1:5099", nexthop="sip:127.0.0.1:5099")


def test_echo_uri_with_another_user_and_params():
    cfg = GatewayConfig.from_env({"GW_ECHO_URI": "sip:echo@10.0.0.7:5080;transport=udp"})
    decision = route(ECHO_EXTENSION, cfg)
    assert (decision.kind, decision.number) == ("trunk", "9196")
    assert decision.ruri == "sip:echo@10.0.0.7:5080;transport=udp"
    assert decision.nexthop == "sip:10.0.0.7:5080;transport=udp"


def test_without_echo_uri_9196_is_an_ordinary_number(embedded, upstream):
    assert embedded.echo_uri == "" and upstream.echo_uri == ""
    assert route(ECHO_EXTENSION, embedded) == RouteDecision(
        kind="local", number="9196", ruri="sip:9196@127.0.0.1:5060", nexthop="sip:127.0.0.1:5060")
    assert route(ECHO_EXTENSION, upstream).kind == "upstream"


@pytest.mark.parametrize("dialled", ["919", "91960", "09196", "+9196", "9197"])
def test_only_the_exact_echo_extension_goes_to_the_echo(dialled):
    cfg = GatewayConfig.from_env({"GW_ECHO_URI": ECHO_URI, "GW_UPSTREAM": "sip:127.0.0.1:5070"})
    decision = route(dialled, cfg)
    assert decision.ruri != ECHO_URI
    assert decision.nexthop != "sip:127.0.0.1:5099"


def test_echo_extension_wins_over_prefix_rules_and_refused_prefixes():
    cfg = GatewayConfig.from_env({"GW_ECHO_URI": ECHO_URI})
    assert route(ECHO_EXTENSION, cfg, rules=(TRUNK_RULE,)).ruri == ECHO_URI
    assert route(ECHO_EXTENSION, cfg, refused=("9",)).kind == "trunk"
    # ... and the same rules still apply to other numbers.
    assert route("9123", cfg, rules=(TRUNK_RULE,)).ruri == "sip:+49123@10.0.0.5:5060"
    assert route("9123", cfg, refused=("9",)).kind == "refused"


def test_echo_uri_without_user():
    cfg = GatewayConfig.from_env({"GW_ECHO_URI": "sip:127.0.0.1:5099"})
    decision = route(ECHO_EXTENSION, cfg)
    assert decision.nexthop == "sip:127.0.0.1:5099"
    assert decision.ruri == "sip:9196@127.0.0.1:5099"
