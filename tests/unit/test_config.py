"""wsgw.config: GW_* environment contract."""

from __future__ import annotations

import dataclasses

import pytest

from wsgw.config import GatewayConfig
from wsgw.sip_uri import SipUri


def test_defaults_from_empty_env():
    cfg = GatewayConfig.from_env({})
    assert cfg.listen_ip == "127.0.0.1"
    assert cfg.ws_port == 8080
    assert cfg.sip_port == 5060
    assert cfg.upstream is None
    assert cfg.embedded is True
    assert cfg.codecs == ("PCMU", "PCMA", "telephone-event")
    assert cfg.subscribers_path == ""
    assert cfg.register_expires == 600
    assert cfg.ring_timeout == 60
    assert cfg.sip_timeout == 8
    assert cfg.sip_socket == "udp:127.0.0.1:5060"


def test_from_env_defaults_equal_dataclass_defaults():
    assert GatewayConfig.from_env({}) == GatewayConfig()


def test_blank_values_mean_default():
    env = {name: "  " for name in ("GW_LISTEN_IP", "GW_WS_PORT", "GW_SIP_PORT", "GW_UPSTREAM", "GW_SUBSCRIBERS",
                                   "GW_REGISTER_EXPIRES", "GW_RING_TIMEOUT", "GW_SIP_TIMEOUT")}
    assert GatewayConfig.from_env(env) == GatewayConfig()


def test_all_values_from_env():
    cfg = GatewayConfig.from_env(
        {
            "GW_LISTEN_IP": " 10.1.2.3 ",
            "GW_WS_PORT": " 9090 ",
            "GW_SIP_PORT": "5080",
            "GW_UPSTREAM": " sip:127.0.0.1:5070 ",
            "GW_SUBSCRIBERS": " /etc/wsgw/subs.txt ",
            "GW_CODECS": " opus , PCMU ,, ",
            "GW_REGISTER_EXPIRES": "120",
            "GW_RING_TIMEOUT": "30",
            "GW_SIP_TIMEOUT": "4",
        }
    )
    assert cfg.listen_ip == "10.1.2.3"
    assert (cfg.ws_port, cfg.sip_port) == (9090, 5080)
    assert cfg.upstream == SipUri(host="127.0.0.1", port=5070)
    assert cfg.embedded is False
    assert cfg.subscribers_path == "/etc/wsgw/subs.txt"
    assert cfg.codecs == ("opus", "PCMU")
    assert (cfg.register_expires, cfg.ring_timeout, cfg.sip_timeout) == (120, 30, 4)
    assert cfg.sip_socket == "udp:10.1.2.3:5080"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("sip:pbx.example.com", SipUri("pbx.example.com")),
        ("sip:pbx.example.com:5080;transport=tcp", SipUri("pbx.example.com", 5080, None, "tcp")),
        ("sip:[2001:db8::5]:5060", SipUri("[2001:db8::5]", 5060)),
    ],
)
def test_upstream_parsing(raw, expected):
    cfg = GatewayConfig.from_env({"GW_UPSTREAM": raw})
    assert cfg.upstream == expected
    assert not cfg.embedded


@pytest.mark.parametrize("raw", ["127.0.0.1:5070", "http://pbx", "sip:host:0", "sip:host:70000", "sip:a b"])
def test_bad_upstream_raises_value_error(raw):
    with pytest.raises(ValueError, match="^GW_UPSTREAM: not a SIP URI|^GW_UPSTREAM: bad port"):
        GatewayConfig.from_env({"GW_UPSTREAM": raw})


@pytest.mark.parametrize("name", ["GW_WS_PORT", "GW_SIP_PORT", "GW_REGISTER_EXPIRES", "GW_RING_TIMEOUT", "GW_SIP_TIMEOUT"])
@pytest.mark.parametrize("raw", ["abc", "80.5", "0x50", "8 0"])
def test_bad_ints_raise_value_error_naming_variable(name, raw):
    with pytest.raises(ValueError) as info:
        GatewayConfig.from_env({name: raw})
    assert str(info.value) == f"{name} must be an integer, got {raw!r}"


@pytest.mark.parametrize("raw", [",", " , ,", "  "])
def test_codecs_without_any_codec_raise(raw):
    with pytest.raises(ValueError, match="GW_CODECS must name at least one codec"):
        GatewayConfig.from_env({"GW_CODECS": raw})


def test_unrelated_env_is_ignored():
    assert GatewayConfig.from_env({"PATH": "/bin", "GW_UNKNOWN": "x"}) == GatewayConfig()


def test_config_is_frozen():
    cfg = GatewayConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sip_port = 1  # type: ignore[misc]


def test_embedded_property_follows_upstream():
    assert GatewayConfig(upstream=SipUri("h", 5070)).embedded is False
    assert GatewayConfig(upstream=None).embedded is True
