"""wsgw.rtpengine_ng: bencode/bdecode, the ng flags toward SIP and toward the browser, the statistics of a
delete reply, and NgClient against a small UDP ng server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from wsgw.config import GatewayConfig
from wsgw.rtpengine_ng import (
    MediaStats,
    NgClient,
    RtpEngineError,
    bdecode,
    bencode,
    stats_from_reply,
    toward_browser,
    toward_sip,
)

GW_CODECS = GatewayConfig().codecs  # ("PCMU", "PCMA", "telephone-event")


# ---- bencode ----


@pytest.mark.parametrize("value, encoded", [
    (0, b"i0e"),
    (42, b"i42e"),
    (-7, b"i-7e"),
    (2**40, b"i1099511627776e"),
    (True, b"i1e"),
    (False, b"i0e"),
])
def test_bencode_int(value, encoded):
    assert bencode(value) == encoded


@pytest.mark.parametrize("value, encoded", [
    ("spam", b"4:spam"),
    ("", b"0:"),
    ("a b:c", b"5:a b:c"),
    ("é", b"2:\xc3\xa9"),  # the length counts UTF-8 bytes, not characters
    ("v=0\r\n", b"5:v=0\r\n"),
])
def test_bencode_str(value, encoded):
    assert bencode(value) == encoded


def test_bencode_bytes_verbatim():
    assert bencode(b"\x00\xff:e") == b"4:\x00\xff:e"
    assert bencode(b"") == b"0:"


def test_bencode_lists_and_tuples():
    assert bencode([]) == b"le"
    assert bencode(["spam", 42]) == b"l4:spami42ee"
    assert bencode(("a", ("b",), [])) == b"l1:al1:belee"


def test_bencode_dict_keys_sorted():
    # Inserted out of order: bencode requires keys sorted as raw byte strings.
    assert bencode({"zeta": 1, "alpha": 2, "mid": "x"}) == b"d5:alphai2e3:mid1:x4:zetai1ee"
    # Raw byte order: upper case before lower case, "a" before "ab".
    assert bencode({"b": 1, "B": 2, "ab": 3, "a": 4}) == b"d1:Bi2e1:ai4e2:abi3e1:bi1ee"
    assert bencode({}) == b"de"


def test_bencode_dict_bytes_and_str_keys_sorted_together():
    assert bencode({"b": 1, b"a": 2}) == b"d1:ai2e1:bi1ee"


def test_bencode_nested_ng_message():
    message = {"command": "offer", "call-id": "c1|o", "rtcp-mux": ["demux"], "codec": {"strip": ["all"]}}
    assert bencode(message) == (b"d7:call-id4:c1|o5:codecd5:stripl3:allee7:command5:offer"
                                b"8:rtcp-muxl5:demuxee")


@pytest.mark.parametrize("value", [1.5, None, {1, 2}, object()])
def test_bencode_refuses_other_types(value):
    with pytest.raises(TypeError):
        bencode(value)


# ---- bdecode ----


@pytest.mark.parametrize("data, value", [
    (b"i0e", 0),
    (b"i42e", 42),
    (b"i-7e", -7),
    (b"4:spam", "spam"),
    (b"0:", ""),
    (b"2:\xc3\xa9", "é"),
    (b"le", []),
    (b"de", {}),
    (b"l4:spami42ee", ["spam", 42]),
    (b"d3:bar4:spam3:fooi42ee", {"bar": "spam", "foo": 42}),
    (b"d4:listl1:ai1eee", {"list": ["a", 1]}),
])
def test_bdecode_values(data, value):
    decoded = bdecode(data)
    assert decoded == value
    assert type(decoded) is type(value)


def test_bdecode_dict_keys_are_str():
    decoded = bdecode(b"d6:resulti1ee")
    assert list(decoded) == ["result"]
    assert isinstance(next(iter(decoded)), str)


def test_bdecode_non_utf8_string_is_kept_as_bytes():
    assert bdecode(b"2:\xff\xfe") == b"\xff\xfe"
    assert bdecode(b"d3:raw3:\x80ab4:text2:oke") == {"raw": b"\x80ab", "text": "ok"}


@pytest.mark.parametrize("value", [
    0, -1, 12345678901234567890, "", "spam", "é und ü", "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n",
    [], [1, "two", [3, {"four": 4}]],
    {"result": "ok", "sdp": "v=0\r\n", "tags": {"a": {"medias": [{"streams": [{"stats": {"packets": 5}}]}]}}},
])
def test_round_trip(value):
    assert bdecode(bencode(value)) == value


def test_round_trip_of_tuples_gives_lists_and_bools_give_ints():
    assert bdecode(bencode(("a", (1, True)))) == ["a", [1, 1]]


def test_round_trip_of_a_realistic_offer():
    message = {"command": "offer", "call-id": "abc@127.0.0.1|o", "from-tag": "t1", "sdp": "v=0\r\n",
               **toward_sip(GW_CODECS)}
    assert bdecode(bencode(message)) == message


@pytest.mark.parametrize("data", [
    b"",  # nothing at all
    b"i42",  # integer without its end
    b"5:spam",  # string shorter than its length
    b"4",  # length without colon
    b"l4:spam",  # list without its end
    b"li1e",
    b"d3:key",  # dictionary: key without value
    b"d3:key5:value",  # dictionary without its end
    b"d3:keyi1e",
])
def test_bdecode_truncated_raises_value_error(data):
    with pytest.raises(ValueError):
        bdecode(data)


@pytest.mark.parametrize("data", [b"i1ei2e", b"4:spamx", b"lee", b"dee", b"0:0:"])
def test_bdecode_trailing_data_raises_value_error(data):
    with pytest.raises(ValueError, match="trailing"):
        bdecode(data)


@pytest.mark.parametrize("data", [b"x", b"-1:a", b" i1e", b"s4:spam", b"\xff", b"l x e"])
def test_bdecode_bad_prefix_raises_value_error(data):
    with pytest.raises(ValueError):
        bdecode(data)


def test_bdecode_bad_integer_raises_value_error():
    for data in (b"iabce", b"ie", b"i-e"):
        with pytest.raises(ValueError):
            bdecode(data)


# ---- flags ----


def test_toward_sip_flags_exact():
    assert toward_sip(GW_CODECS) == {
        "ICE": "remove",
        "transport-protocol": "RTP/AVP",
        "rtcp-mux": ["demux"],
        "replace": ["origin", "session-connection"],
        "flags": ["strip-extmap"],
        "codec": {"strip": ["all"], "except": ["PCMU", "PCMA", "telephone-event"]},
        "DTLS-reverse": "passive",
    }


@pytest.mark.parametrize("codecs", [("PCMA", "PCMU"), ["G722", "PCMA", "telephone-event"], ("opus",)])
def test_toward_sip_codec_except_keeps_gw_codecs_order(codecs):
    flags = toward_sip(codecs)
    assert flags["codec"] == {"strip": ["all"], "except": list(codecs)}
    assert isinstance(flags["codec"]["except"], list)  # bencodes as a list from a tuple too


def test_toward_sip_flags_from_config_codecs():
    cfg = GatewayConfig.from_env({"GW_CODECS": "PCMA, telephone-event ,PCMU"})
    assert toward_sip(cfg.codecs)["codec"]["except"] == ["PCMA", "telephone-event", "PCMU"]


def test_toward_sip_codec_list_is_a_copy():
    codecs = ["PCMU", "PCMA"]
    flags = toward_sip(codecs)
    flags["codec"]["except"].append("opus")
    assert codecs == ["PCMU", "PCMA"]
    assert toward_sip(codecs)["codec"]["except"] == ["PCMU", "PCMA"]


def test_toward_browser_flags_exact():
    assert toward_browser() == {
        "ICE": "force",
        "DTLS": "passive",
        "transport-protocol": "UDP/TLS/RTP/SAVPF",
        "rtcp-mux": ["offer", "require"],
        "replace": ["origin", "session-connection"],
    }


def test_flags_directions_differ_where_it_matters():
    sip, browser = toward_sip(GW_CODECS), toward_browser()
    assert (sip["ICE"], browser["ICE"]) == ("remove", "force")
    assert "DTLS-reverse" in sip and "DTLS-reverse" not in browser
    assert "codec" not in browser  # the browser side gets what the SIP side answered
    assert bdecode(bencode(sip)) == sip and bdecode(bencode(browser)) == browser


# ---- stats_from_reply ----

BROWSER_TAG = "gw-local-tag"
FAR_TAG = "callee-tag"


def _stream(port: int, packets: int, nbytes: int, rtcp: bool = False, ssrc: int | None = None) -> dict:
    stream = {
        "local port": port, "local address": "127.0.0.1", "family": "IPv4",
        "endpoint": {"family": "IPv4", "address": "127.0.0.1", "port": port + 1000},
        "advertised endpoint": {"family": "IPv4", "address": "127.0.0.1", "port": port + 1000},
        "last packet": 1795897858, "flags": ["RTCP" if rtcp else "RTP", "filled"],
        "stats": {"packets": packets, "bytes": nbytes, "errors": 0},
    }
    if ssrc is not None:
        stream["SSRC"] = ssrc  # rtpengine: an integer on the stream, not a dictionary
    return stream


def _monologue(tag: str, other: str, streams: list[dict], protocol: str) -> dict:
    return {
        "tag": tag, "created": 1795897858,
        "subscriptions": [{"tag": other, "type": "offer/answer"}],
        "subscribers": [{"tag": other, "type": "offer/answer"}],
        "medias": [{"index": 1, "type": "audio", "protocol": protocol, "codec": "PCMU/8000",
                    "streams": streams, "flags": ["initialized", "send", "recv"]}],
    }


def realistic_delete_reply(top_level_ssrc: dict | None = None) -> dict:
    """A delete/query reply shaped like rtpengine 10.5's (captured on this machine and trimmed):
    the browser sent 250 RTP packets (and 3 RTCP on its muxed stream), the far end 240 RTP + 2 RTCP."""
    return {
        "created": 1795897858, "created_us": 899743, "last signal": 1795897858,
        "SSRC": top_level_ssrc or {},
        "tags": {
            BROWSER_TAG: _monologue(BROWSER_TAG, FAR_TAG, [_stream(30810, 253, 43_300, ssrc=4369)],
                                    "UDP/TLS/RTP/SAVPF"),
            FAR_TAG: _monologue(FAR_TAG, BROWSER_TAG, [_stream(30800, 240, 41_280, ssrc=8738),
                                                       _stream(30801, 2, 104, rtcp=True)], "RTP/AVP"),
        },
        "totals": {"RTP": {"packets": 493, "bytes": 84_580, "errors": 0},
                   "RTCP": {"packets": 2, "bytes": 104, "errors": 0}},
        "result": "ok",
    }


def test_stats_attribute_the_browser_tags_packets_to_sip():
    reply = bdecode(bencode(realistic_delete_reply()))  # as NgClient gets it
    stats = stats_from_reply(reply, BROWSER_TAG)
    assert stats == MediaStats(packets_to_sip=253, bytes_to_sip=43_300, packets_to_browser=242,
                               bytes_to_browser=41_384, lost=0)


def test_stats_from_the_far_ends_view_are_swapped():
    stats = stats_from_reply(realistic_delete_reply(), FAR_TAG)
    assert (stats.packets_to_sip, stats.bytes_to_sip) == (242, 41_384)
    assert (stats.packets_to_browser, stats.bytes_to_browser) == (253, 43_300)


def test_stats_as_dict_keys_and_values():
    stats = stats_from_reply(realistic_delete_reply(), BROWSER_TAG)
    assert stats.as_dict() == {"packetsToSip": 253, "bytesToSip": 43_300, "packetsToBrowser": 242,
                               "bytesToBrowser": 41_384, "lost": 0}


def test_stats_sum_packets_lost_of_per_media_ssrc_entries():
    reply = realistic_delete_reply()
    reply["tags"][BROWSER_TAG]["medias"][0]["SSRC"] = {"4369": {"packets lost": 3}, "99": {"packets lost": 0}}
    reply["tags"][FAR_TAG]["medias"][0]["SSRC"] = {"8738": {"packets lost": 4}, "7": {}, "8": None}
    assert stats_from_reply(reply, BROWSER_TAG).lost == 7


def test_stats_lost_from_rtpengines_top_level_ssrc_dictionary():
    reply = realistic_delete_reply(top_level_ssrc={
        "4369": {"cumulative loss": 3, "average MOS": {"MOS": 43, "packet loss": 1, "samples": 2}},
        "8738": {"cumulative loss": 4},
    })
    assert stats_from_reply(reply, BROWSER_TAG).lost == 7


@pytest.mark.parametrize("reply", [
    {"result": "ok"},  # what rtpengine 10.5 answers a delete without from-tag
    {"result": "ok", "tags": {}},
    {"result": "ok", "tags": None},
    {"result": "ok", "tags": {BROWSER_TAG: "not-a-dict"}},
    {"result": "ok", "tags": {BROWSER_TAG: {"medias": [{"streams": [{}]}]}}},
])
def test_stats_of_replies_without_figures_are_zero(reply):
    assert stats_from_reply(reply, BROWSER_TAG) == MediaStats()
    assert MediaStats().as_dict() == {"packetsToSip": 0, "bytesToSip": 0, "packetsToBrowser": 0,
                                      "bytesToBrowser": 0, "lost": 0}


def test_stats_unknown_browser_tag_counts_everything_toward_the_browser():
    stats = stats_from_reply(realistic_delete_reply(), "some-other-tag")
    assert (stats.packets_to_sip, stats.packets_to_browser) == (0, 495)


# ---- NgClient against a UDP ng server ----


class FakeNgServer:
    """A tiny ng server on 127.0.0.1: records (cookie, message) and answers what `respond` returns.

    `respond(cookie, message)` returns a list of datagrams to send back (empty: stay silent)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.requests: list[tuple[bytes, dict]] = []
        self.raw: list[bytes] = []
        self.respond = lambda cookie, message: [cookie + b" " + bencode({"result": "ok"})]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"udp:127.0.0.1:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.raw.append(data)
            cookie, _, body = data.partition(b" ")
            message = bdecode(body)
            self.requests.append((cookie, message))
            for datagram in self.respond(cookie, message):
                self.sock.sendto(datagram, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def ng_server():
    server = FakeNgServer()
    yield server
    server.close()


def test_command_sends_cookie_and_bencoded_message(ng_server):
    ng_server.respond = lambda cookie, message: [cookie + b" " + bencode({"result": "pong"})]
    reply = NgClient(ng_server.address).command("ping")
    assert reply == {"result": "pong"}
    assert len(ng_server.requests) == 1
    cookie, message = ng_server.requests[0]
    assert message == {"command": "ping"}
    assert len(cookie) == 12 and all(c in b"0123456789abcdef" for c in cookie)
    assert ng_server.raw[0] == cookie + b" d7:command4:pinge"


def test_command_params_and_reply(ng_server):
    ng_server.respond = lambda cookie, message: [
        cookie + b" " + bencode({"result": "ok", "sdp": "v=0\r\nrelayed\r\n", "echo": message["from-tag"]})]
    reply = NgClient(ng_server.address, timeout=1.0).command(
        "offer", **{"call-id": "c1|o", "from-tag": "t1", "sdp": "v=0\r\n", "rtcp-mux": ["demux"]})
    assert reply == {"result": "ok", "sdp": "v=0\r\nrelayed\r\n", "echo": "t1"}
    assert ng_server.requests[0][1] == {"command": "offer", "call-id": "c1|o", "from-tag": "t1", "sdp": "v=0\r\n",
                                        "rtcp-mux": ["demux"]}


def test_each_command_has_a_fresh_cookie(ng_server):
    client = NgClient(ng_server.address)
    for _ in range(3):
        client.command("ping")
    cookies = [cookie for cookie, _ in ng_server.requests]
    assert len(set(cookies)) == 3


def test_command_name_wins_over_a_command_param(ng_server):
    NgClient(ng_server.address).command("query", command="delete", **{"call-id": "x"})
    assert ng_server.requests[0][1] == {"command": "query", "call-id": "x"}


def test_result_error_raises_rtpengine_error_with_reason(ng_server):
    ng_server.respond = lambda cookie, message: [
        cookie + b" " + bencode({"result": "error", "error-reason": "Unknown call-id"})]
    with pytest.raises(RtpEngineError, match="rtpengine answer: Unknown call-id"):
        NgClient(ng_server.address).command("answer", **{"call-id": "nope"})


def test_result_error_without_reason(ng_server):
    ng_server.respond = lambda cookie, message: [cookie + b" " + bencode({"result": "error"})]
    with pytest.raises(RtpEngineError, match="rtpengine offer: error"):
        NgClient(ng_server.address).command("offer")


def test_result_other_than_error_is_returned(ng_server):
    ng_server.respond = lambda cookie, message: [
        cookie + b" " + bencode({"result": "load limit", "message": "busy"})]
    assert NgClient(ng_server.address).command("ping") == {"result": "load limit", "message": "busy"}


def test_timeout_raises_rtpengine_error(ng_server):
    ng_server.respond = lambda cookie, message: []
    client = NgClient(ng_server.address, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(RtpEngineError, match=rf"127\.0\.0\.1:{ng_server.port} did not answer delete"):
        client.command("delete", **{"call-id": "c1"})
    assert 0.15 <= time.monotonic() - started < 2.0
    assert len(ng_server.requests) == 1


def test_timeout_when_nobody_listens():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The port is closed now: the ICMP error or the timeout, either way an RtpEngineError.
    with pytest.raises(RtpEngineError):
        NgClient(f"127.0.0.1:{port}", timeout=0.2).command("ping")


def test_reply_with_the_wrong_cookie_is_skipped(ng_server):
    ng_server.respond = lambda cookie, message: [
        b"000000000000 " + bencode({"result": "error", "error-reason": "stale"}),  # a late reply to someone else
        b"garbage-without-space",
        cookie + b" " + bencode({"result": "ok", "sdp": "mine"}),
    ]
    assert NgClient(ng_server.address, timeout=1.0).command("offer") == {"result": "ok", "sdp": "mine"}


def test_only_wrong_cookies_is_a_timeout(ng_server):
    ng_server.respond = lambda cookie, message: [b"ffffffffffff " + bencode({"result": "ok"})]
    with pytest.raises(RtpEngineError, match="did not answer"):
        NgClient(ng_server.address, timeout=0.2).command("ping")


def test_reply_that_is_not_a_dictionary_raises(ng_server):
    ng_server.respond = lambda cookie, message: [cookie + b" " + bencode(["ok"])]
    with pytest.raises(RtpEngineError, match="not a dictionary"):
        NgClient(ng_server.address).command("ping")


@pytest.mark.parametrize("address, expected", [
    ("udp:127.0.0.1:2223", ("127.0.0.1", 2223)),
    ("127.0.0.1:2223", ("127.0.0.1", 2223)),
    ("udp:10.0.0.5:22222", ("10.0.0.5", 22222)),
    ("[::1]:2223", ("::1", 2223)),
    ("udp:[2001:db8::5]:2223", ("2001:db8::5", 2223)),
])
def test_address_parsing(address, expected):
    client = NgClient(address, timeout=0.5)
    assert client.addr == expected
    assert client.timeout == 0.5


def test_default_timeout_is_two_seconds():
    assert NgClient("udp:127.0.0.1:2223").timeout == 2.0


@pytest.mark.parametrize("address", ["udp:127.0.0.1", "", "udp:127.0.0.1:port"])
def test_bad_address_raises_value_error(address):
    with pytest.raises(ValueError):
        NgClient(address)


def test_ipv6_loopback_round_trip():
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    port = sock.getsockname()[1]
    sock.settimeout(2)

    def serve() -> None:
        data, peer = sock.recvfrom(65535)
        cookie, _, _ = data.partition(b" ")
        sock.sendto(cookie + b" " + bencode({"result": "pong"}), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert NgClient(f"udp:[::1]:{port}", timeout=1.0).command("ping") == {"result": "pong"}
    finally:
        thread.join(timeout=2)
        sock.close()
