"""A small synchronous SIP-over-WebSocket client that behaves like JsSIP, for tests.

It plays a legacy agent page: WebSocket with subprotocol `sip`, `Via: SIP/2.0/WSS
<random>.invalid`, a Contact `sip:<random>@<random>.invalid;transport=ws`, digest
authentication on 401/407 (MD5, qop=auth), REGISTER, INVITE with an SDP, answering
an incoming INVITE, ACK, BYE and CANCEL. A reader thread queues every message
(as tests/harness/wsclient.py does for JSON); `wait_request()` / `wait_response()`
pick messages out of the queue, keeping the others for later.

It is deliberately minimal: one WebSocket, reliable transport (no retransmissions),
loose routing only. The digest code is written here on purpose rather than taken
from kemi/wsgw/digest.py, so that it cross-checks Kamailio's auth module.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field

from .inbox import WsConnection


@dataclass
class SipMessage:
    first_line: str
    headers: list[tuple[str, str]]  # in order, names as received
    body: str = ""

    @property
    def is_request(self) -> bool:
        return not self.first_line.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        return self.first_line.split(" ", 1)[0] if self.is_request else self.cseq_method

    @property
    def ruri(self) -> str:
        return self.first_line.split(" ")[1]

    @property
    def status(self) -> int:
        return int(self.first_line.split(" ")[1]) if not self.is_request else 0

    def all(self, name: str) -> list[str]:
        """Every value of a header (comma-separated lists split for Route/Record-Route/Via)."""
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        if name.lower() in ("route", "record-route", "via", "path"):
            return [part.strip() for v in values for part in _split_commas(v)]
        return values

    def get(self, name: str, default: str = "") -> str:
        values = self.all(name)
        return values[0] if values else default

    @property
    def call_id(self) -> str:
        return self.get("Call-ID")

    @property
    def cseq(self) -> int:
        return int(self.get("CSeq").split()[0])

    @property
    def cseq_method(self) -> str:
        return self.get("CSeq").split()[1]

    @property
    def from_tag(self) -> str:
        return _tag(self.get("From"))

    @property
    def to_tag(self) -> str:
        return _tag(self.get("To"))

    def __str__(self) -> str:
        return self.first_line


def _split_commas(value: str) -> list[str]:
    """Split a header value on commas outside <> and quotes."""
    parts, depth, quoted, current = [], 0, False, ""
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current)
    return parts


def _tag(value: str) -> str:
    m = re.search(r";\s*tag=([^;>\s]+)", value)
    return m.group(1) if m else ""


def uri_of(value: str) -> str:
    """The URI of a name-addr (`"x" <uri>;p`) or addr-spec header value."""
    m = re.search(r"<([^>]*)>", value)
    return m.group(1) if m else value.split(";")[0].strip()


def parse_message(text: str) -> SipMessage:
    head, _, body = text.partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded line
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return SipMessage(lines[0], headers, body)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def digest_header(challenge: str, method: str, uri: str, user: str, password: str, nc: int = 1) -> str:
    """Answer a Digest challenge (RFC 2617, MD5, qop=auth when offered), as JsSIP does."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge[len("Digest"):]))
    realm, nonce = params["realm"], params["nonce"]
    ha1 = _md5(f"{user}:{realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    parts = [f'username="{user}"', f'realm="{realm}"', f'nonce="{nonce}"', f'uri="{uri}"', "algorithm=MD5"]
    if "auth" in [q.strip() for q in params.get("qop", "").split(",")]:
        cnonce, nc_hex = secrets.token_hex(8), f"{nc:08x}"
        response = _md5(f"{ha1}:{nonce}:{nc_hex}:{cnonce}:auth:{ha2}")
        parts += [f'response="{response}"', "qop=auth", f'cnonce="{cnonce}"', f"nc={nc_hex}"]
    else:
        parts.append(f'response="{_md5(f"{ha1}:{nonce}:{ha2}")}"')
    if "opaque" in params:
        parts.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(parts)


@dataclass
class Dialog:
    """One INVITE dialog as this client sees it (caller or callee)."""

    call_id: str
    local_tag: str
    local_uri: str
    remote_uri: str
    remote_tag: str = ""
    remote_target: str = ""
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 1
    invite: SipMessage | None = None  # the INVITE we sent (caller) or received (callee)
    invite_branch: str = ""
    invite_ruri: str = ""
    auth: str = ""  # the (Proxy-)Authorization line of our last INVITE, if any


def _token() -> str:
    return secrets.token_hex(6)


class SipWsClient(WsConnection[SipMessage]):
    """A legacy (JsSIP-like) agent: `SipWsClient(url, "5001", "agent5001")`."""

    def __init__(self, url: str, user: str, password: str = "", domain: str = "gw.test",
                 display_name: str = "", timeout: float = 10.0, preloaded_route: str = "") -> None:
        self.user, self.password, self.domain = user, password, domain
        # JsSIP's use_preloaded_route: a Route header (the server) on initial INVITEs.
        self.preloaded_route = preloaded_route
        self.display_name = display_name
        self.aor = f"sip:{user}@{domain}"
        self.via_host = f"{_token()}.invalid"
        self.contact_uri = f"sip:{_token()}@{_token()}.invalid;transport=ws"
        self.instance = f"<urn:uuid:{secrets.token_hex(4)}-0000-4000-8000-{secrets.token_hex(6)}>"
        self.received: list[SipMessage] = []  # everything, for assertions (before the reader starts)
        self.reg_call_id = f"{_token()}{_token()}"
        self.reg_from_tag = _token()
        self.reg_cseq = 0
        super().__init__(url, timeout)

    # -- transport --

    def parse(self, text: str) -> SipMessage | None:
        if not text.strip():
            return None  # CRLF keep-alive
        msg = parse_message(text)
        self.received.append(msg)
        return msg

    def send_text(self, text: str) -> None:
        self.ws.send(text)

    def wait_request(self, method: str, timeout: float | None = None, call_id: str | None = None) -> SipMessage:
        return self.wait(lambda m: m.is_request and m.method == method and (call_id is None or m.call_id == call_id),
                         timeout, f"{method} request")

    def wait_response(self, call_id: str, cseq_method: str, final: bool = True,
                      timeout: float | None = None) -> SipMessage:
        return self.wait(lambda m: not m.is_request and m.call_id == call_id and m.cseq_method == cseq_method
                         and (m.status >= 200 or not final), timeout, f"{cseq_method} response")

    def assert_no_request(self, method: str, seconds: float) -> None:
        try:
            msg = self.wait_request(method, seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected {method}: {msg}")

    # -- building --

    def _from(self, tag: str) -> str:
        name = f'"{self.display_name}" ' if self.display_name else ""
        return f"{name}<{self.aor}>;tag={tag}"

    def _request(self, method: str, ruri: str, headers: list[tuple[str, str]], body: str = "",
                 branch: str | None = None, content_type: str = "application/sdp") -> str:
        branch = branch or f"z9hG4bK{_token()}"
        lines = [f"{method} {ruri} SIP/2.0", f"Via: SIP/2.0/WSS {self.via_host};branch={branch}",
                 "Max-Forwards: 69"]
        lines += [f"{n}: {v}" for n, v in headers]
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines += ["User-Agent: JsSIP 3.10.0 (sipws test client)", f"Content-Length: {len(body.encode())}", "", ""]
        self.send_text("\r\n".join(lines) + body)
        return branch

    def respond(self, request: SipMessage, code: int, reason: str, to_tag: str = "",
                headers: list[tuple[str, str]] | None = None, body: str = "") -> None:
        """Answer `request`: Vias, From, To (+tag), Call-ID, CSeq copied; Record-Route too on 18x/2xx to INVITE."""
        to = request.get("To")
        if to_tag and not _tag(to):
            to += f";tag={to_tag}"
        lines = [f"SIP/2.0 {code} {reason}"]
        lines += [f"Via: {v}" for v in request.all("Via")]
        if request.method == "INVITE" and 100 < code < 300:
            lines += [f"Record-Route: {r}" for r in request.all("Record-Route")]
        lines += [f"From: {request.get('From')}", f"To: {to}", f"Call-ID: {request.call_id}",
                  f"CSeq: {request.get('CSeq')}"]
        lines += [f"{n}: {v}" for n, v in headers or []]
        if body:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(body.encode())}", "", ""]
        self.send_text("\r\n".join(lines) + body)

    # -- registration --

    def register(self, expires: int = 600, password: str | None = None) -> SipMessage:
        """REGISTER, answering one challenge; the final response (200, 403, ...)."""
        password = self.password if password is None else password
        response = self.send_register(expires, "")
        if response.status == 401:
            auth = digest_header(response.get("WWW-Authenticate"), "REGISTER", f"sip:{self.domain}",
                                 self.user, password)
            response = self.send_register(expires, auth)
        return response

    def unregister(self) -> SipMessage:
        return self.register(expires=0)

    def send_register(self, expires: int, auth: str) -> SipMessage:
        self.reg_cseq += 1
        headers = [
            ("To", f"<{self.aor}>"), ("From", self._from(self.reg_from_tag)), ("Call-ID", self.reg_call_id),
            ("CSeq", f"{self.reg_cseq} REGISTER"),
            ("Contact", f"<{self.contact_uri}>;+sip.ice;reg-id=1;+sip.instance=\"{self.instance}\";expires={expires}"),
            ("Expires", str(expires)), ("Allow", "INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY"),
            ("Supported", "path,gruu,outbound"),
        ]
        if auth:
            headers.append(("Authorization", auth))
        self._request("REGISTER", f"sip:{self.domain}", headers)
        return self.wait_response(self.reg_call_id, "REGISTER")

    # -- calls: caller side --

    def invite(self, to_user: str, sdp: str, wait_final: bool = True, password: str | None = None,
               to_domain: str | None = None) -> tuple[Dialog, SipMessage | None]:
        """Send an INVITE to `to_user`; answer a 401/407 once. With wait_final, also wait for the
        final response (and ACK a 2xx); else return after the first provisional (or final)."""
        target = f"sip:{to_user}@{to_domain or self.domain}"
        dialog = Dialog(call_id=f"{_token()}{_token()}", local_tag=_token(), local_uri=self.aor, remote_uri=target,
                        invite_ruri=target)
        self._send_invite(dialog, sdp)
        response = self.wait_response(dialog.call_id, "INVITE", final=False)
        if response.status in (401, 407):
            self._ack_failure(dialog, response)
            header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
            value = digest_header(response.get(header), "INVITE", target, self.user,
                                  self.password if password is None else password)
            dialog.auth = ("Authorization" if response.status == 401 else "Proxy-Authorization") + ": " + value
            dialog.local_cseq += 1
            self._send_invite(dialog, sdp)
            response = self.wait_response(dialog.call_id, "INVITE", final=False)
        if response.status >= 200 or not wait_final:
            return dialog, self._final(dialog, response) if response.status >= 200 else response
        return dialog, self.wait_final(dialog)

    def _send_invite(self, dialog: Dialog, sdp: str) -> None:
        headers = [
            ("To", f"<{dialog.remote_uri}>"), ("From", self._from(dialog.local_tag)), ("Call-ID", dialog.call_id),
            ("CSeq", f"{dialog.local_cseq} INVITE"), ("Contact", f"<{self.contact_uri};ob>"),
            ("Allow", "INVITE,ACK,CANCEL,BYE,UPDATE,MESSAGE,OPTIONS,REFER,INFO,NOTIFY"),
            ("Supported", "ice,replaces,outbound"),
        ]
        if dialog.auth:
            name, _, value = dialog.auth.partition(": ")
            headers.append((name, value))
        if self.preloaded_route:
            headers.insert(0, ("Route", self.preloaded_route))
        dialog.invite_branch = self._request("INVITE", dialog.invite_ruri, headers, sdp)

    def wait_final(self, dialog: Dialog, timeout: float | None = None) -> SipMessage:
        """The final response to our INVITE (2xx ACKed by the caller of ack(); non-2xx ACKed here)."""
        return self._final(dialog, self.wait_response(dialog.call_id, "INVITE", timeout=timeout))

    def _final(self, dialog: Dialog, response: SipMessage) -> SipMessage:
        if 200 <= response.status < 300:
            dialog.remote_tag = response.to_tag
            dialog.remote_target = uri_of(response.get("Contact"))
            dialog.route_set = list(reversed([uri_of(r) for r in response.all("Record-Route")]))
            self.ack(dialog)
        else:
            self._ack_failure(dialog, response)
        return response

    def _ack_failure(self, dialog: Dialog, response: SipMessage) -> None:
        """ACK of a non-2xx: same branch and Request-URI as the INVITE (hop by hop)."""
        headers = [("To", response.get("To")), ("From", self._from(dialog.local_tag)), ("Call-ID", dialog.call_id),
                   ("CSeq", f"{dialog.local_cseq} ACK")]
        self._request("ACK", dialog.invite_ruri, headers, branch=dialog.invite_branch)

    def ack(self, dialog: Dialog) -> None:
        self._in_dialog(dialog, "ACK", cseq=dialog.local_cseq)

    def cancel(self, dialog: Dialog) -> SipMessage:
        """CANCEL our INVITE (after a provisional); the response to the CANCEL."""
        headers = [("To", f"<{dialog.remote_uri}>"), ("From", self._from(dialog.local_tag)),
                   ("Call-ID", dialog.call_id), ("CSeq", f"{dialog.local_cseq} CANCEL")]
        self._request("CANCEL", dialog.invite_ruri, headers, branch=dialog.invite_branch)
        return self.wait_response(dialog.call_id, "CANCEL")

    # -- calls: callee side --

    def wait_invite(self, timeout: float | None = None) -> Dialog:
        """An incoming INVITE: the dialog (we are the UAS); answer with ring()/answer()/reject()."""
        invite = self.wait_request("INVITE", timeout)
        return Dialog(call_id=invite.call_id, local_tag=_token(), local_uri=uri_of(invite.get("To")),
                      remote_uri=uri_of(invite.get("From")), remote_tag=invite.from_tag,
                      remote_target=uri_of(invite.get("Contact")),
                      route_set=[uri_of(r) for r in invite.all("Record-Route")], local_cseq=0, invite=invite)

    def ring(self, dialog: Dialog) -> None:
        assert dialog.invite is not None
        self.respond(dialog.invite, 180, "Ringing", dialog.local_tag, [("Contact", f"<{self.contact_uri}>")])

    def answer(self, dialog: Dialog, sdp: str, wait_ack: bool = True) -> SipMessage | None:
        """200 OK with `sdp`; returns the ACK that confirms it (with wait_ack)."""
        assert dialog.invite is not None
        self.respond(dialog.invite, 200, "OK", dialog.local_tag, [("Contact", f"<{self.contact_uri}>")], sdp)
        return self.wait_request("ACK", call_id=dialog.call_id) if wait_ack else None

    def reject(self, dialog: Dialog, code: int = 486, reason: str = "Busy Here") -> SipMessage:
        assert dialog.invite is not None
        self.respond(dialog.invite, code, reason, dialog.local_tag)
        return self.wait_request("ACK", call_id=dialog.call_id)

    # -- in-dialog --

    def _in_dialog(self, dialog: Dialog, method: str, cseq: int | None = None, body: str = "",
                   content_type: str = "application/sdp") -> str:
        if cseq is None:
            dialog.local_cseq += 1
            cseq = dialog.local_cseq
        headers = [("To", f"<{dialog.remote_uri}>;tag={dialog.remote_tag}"),
                   ("From", self._from(dialog.local_tag) if dialog.invite is None
                    else f"<{dialog.local_uri}>;tag={dialog.local_tag}"),
                   ("Call-ID", dialog.call_id), ("CSeq", f"{cseq} {method}")]
        if dialog.route_set:
            headers.insert(0, ("Route", ", ".join(f"<{r}>" for r in dialog.route_set)))
        if method == "INVITE":
            headers.append(("Contact", f"<{self.contact_uri}>"))
        return self._request(method, dialog.remote_target, headers, body, content_type=content_type)

    def bye(self, dialog: Dialog, wait: bool = True) -> SipMessage | None:
        """Hang up: BYE inside the dialog; its final response (with wait; else collect it
        later with wait_response, e.g. when this test also plays the other side)."""
        if dialog.invite is not None and dialog.local_cseq == 0:
            dialog.local_cseq = 1  # callee: our own CSeq space starts here
        self._in_dialog(dialog, "BYE")
        return self.wait_response(dialog.call_id, "BYE") if wait else None

    def send_in_dialog(self, dialog: Dialog, method: str, body: str = "",
                       content_type: str = "application/sdp") -> int:
        """Send `method` inside the dialog without waiting (collect the response with
        wait_response); the CSeq used."""
        if dialog.invite is not None and dialog.local_cseq == 0:
            dialog.local_cseq = 1
        self._in_dialog(dialog, method, body=body, content_type=content_type)
        return dialog.local_cseq

    def reinvite(self, dialog: Dialog, sdp: str, wait: bool = True) -> SipMessage | None:
        """A re-INVITE (hold/resume) inside the dialog. With wait: the final response (a 2xx is ACKed);
        else call finish_reinvite() once the other side (played by the same test) has answered."""
        self.send_in_dialog(dialog, "INVITE", sdp)
        return self.finish_reinvite(dialog) if wait else None

    def finish_reinvite(self, dialog: Dialog) -> SipMessage:
        response = self.wait_response(dialog.call_id, "INVITE")
        if 200 <= response.status < 300:
            self._in_dialog(dialog, "ACK", cseq=dialog.local_cseq)
        return response

    def answer_bye(self, dialog: Dialog, timeout: float | None = None) -> SipMessage:
        """Wait for the other side's BYE and answer 200."""
        bye = self.wait_request("BYE", timeout, call_id=dialog.call_id)
        self.respond(bye, 200, "OK")
        return bye
