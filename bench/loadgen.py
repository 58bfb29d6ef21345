"""Open-loop call load over WebSocket, for the gateway (JSON protocol) and for plain Kamailio (SIP over WS).

Both generators place calls round-robin over a fixed set of WebSocket connections at an offered rate
(calls are started on schedule whatever the state of earlier calls, so a server that falls behind
shows it as growing latency and failures, not as a slower client). Per call:

- gateway: `call` (Chromium-like SDP offer) -> `callAccepted` [set-up latency] -> `hangup` -> `callEnded`;
- plain:   INVITE (same SDP) -> 100 -> 200 [set-up latency] -> ACK, BYE -> 200 (BYE).

A call counts as ok when the last step arrives; any other final answer, or none within the step's
timeout, is a failure.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import string
import time
from dataclasses import dataclass, field

import wsproto
from common import lat_summary

from harness.sdp import CHROME_OFFER

ECHO_DN = "9196"  # routing.ECHO_EXTENSION: a trunk to GW_ECHO_URI (here the SIPp UAS) in embedded mode


@dataclass
class StepResult:
    offered_cps: float
    calls: int
    ok: int = 0
    failed: int = 0
    timed_out: int = 0
    send_s: float = 0.0  # first to last call started
    total_s: float = 0.0  # first call started to last call finished
    latencies_ms: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def sent_cps(self) -> float:
        return (self.calls - 1) / self.send_s if self.send_s > 0 else 0.0

    @property
    def achieved_cps(self) -> float:
        return self.ok / self.total_s if self.total_s > 0 else 0.0

    def summary(self) -> dict:
        return {
            "offered_cps": round(self.offered_cps, 1),
            "calls": self.calls,
            "ok": self.ok,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "failures": self.failures,
            "sent_cps": round(self.sent_cps, 1),
            "achieved_cps": round(self.achieved_cps, 1),
            "setup_latency": lat_summary(self.latencies_ms),
        }


def _rand(n: int = 10) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=n))


class _Base:
    def __init__(self, host: str, port: int, nconns: int) -> None:
        self.host, self.port, self.nconns = host, port, nconns
        self.conns: list[wsproto.WsConn] = []
        self.calls: dict[str, list] = {}  # call key -> [t_start, t_setup, state]
        self.step: StepResult | None = None
        self.outstanding = 0
        self.idle = asyncio.Event()
        self.seq = 0

    async def close(self) -> None:
        for c in self.conns:
            c.close()
        await asyncio.sleep(0.2)
        for c in self.conns:
            c.abort()

    def _ok(self, key: str) -> None:
        rec = self.calls.pop(key, None)
        if rec is None or self.step is None:
            return
        self.step.ok += 1
        self._finish()

    def _fail(self, key: str, why: str) -> None:
        rec = self.calls.pop(key, None)
        if rec is None or self.step is None:
            return
        self.step.failed += 1
        self.step.failures[why] = self.step.failures.get(why, 0) + 1
        self._finish()

    def _finish(self) -> None:
        self.outstanding -= 1
        self.last_done = time.perf_counter()
        if self.outstanding == 0 and self.all_sent:
            self.idle.set()

    def start_call(self, conn: wsproto.WsConn) -> None:
        raise NotImplementedError

    async def run_step(self, rate: float, count: int, timeout: float = 12.0) -> StepResult:
        """Offer `count` calls at `rate` calls/s; wait at most `timeout` s after the last one."""
        step = self.step = StepResult(offered_cps=rate, calls=count)
        self.calls.clear()
        self.outstanding = 0
        self.all_sent = False
        self.idle.clear()
        live = [c for c in self.conns if c.is_open]
        if len(live) < len(self.conns):
            raise RuntimeError(f"{len(self.conns) - len(live)} WebSockets closed before the step")
        t0 = time.perf_counter()
        self.last_done = t0
        i = 0
        while i < count:
            now = time.perf_counter()
            due = min(count, int((now - t0) * rate) + 1)
            while i < due:
                self.outstanding += 1
                self.start_call(live[i % len(live)])
                i += 1
            if i < count:
                wait = t0 + i / rate - time.perf_counter()
                await asyncio.sleep(wait if wait > 0 else 0)
        t_sent = time.perf_counter()
        step.send_s = t_sent - t0
        self.all_sent = True
        if self.outstanding:
            try:
                await asyncio.wait_for(self.idle.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        step.timed_out = len(self.calls)
        if step.timed_out:
            step.failures["timeout"] = step.timed_out
            step.failed += step.timed_out
            for key, rec in self.calls.items():
                state = rec[2]
                step.failures[f"timeout_in_{state}"] = step.failures.get(f"timeout_in_{state}", 0) + 1
            self.calls.clear()
        step.total_s = self.last_done - t0
        self.step = None
        # Late answers of abandoned calls must not leak into the next step.
        await asyncio.sleep(0.2)
        return step


class GatewayLoad(_Base):
    """N JSON clients, each registered as its own DN in embedded mode."""

    def __init__(self, host: str, port: int, subscribers: list[tuple[str, str]], dial: str = ECHO_DN) -> None:
        super().__init__(host, port, len(subscribers))
        self.subscribers = subscribers
        sdp = json.dumps(CHROME_OFFER)
        self._call_tpl = '{"type":"call","id":"q%s","payload":{"to":"' + dial + '","callId":"c%s","sdp":' + sdp + "}}"
        self._hangup_tpl = '{"type":"hangup","id":"h%s","payload":{"callId":"c%s"}}'
        self._waiting: dict[str, asyncio.Future] = {}

    async def setup(self) -> None:
        for dn, pw in self.subscribers:
            conn = await wsproto.connect(self.host, self.port, on_text=self._on_text)
            self.conns.append(conn)
            reply = await self.request(conn, "register", {"dn": dn, "password": pw})
            if reply.get("type") != "registered":
                raise RuntimeError(f"register {dn}: {reply}")

    async def request(self, conn: wsproto.WsConn, msg_type: str, payload: dict, timeout: float = 10.0) -> dict:
        rid = "x" + _rand(8)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        conn.send_text(json.dumps({"type": msg_type, "id": rid, "payload": payload}))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiting.pop(rid, None)

    def start_call(self, conn: wsproto.WsConn) -> None:
        self.seq += 1
        key = str(self.seq)
        self.calls[key] = [time.perf_counter(), 0.0, "calling", conn]
        conn.send_text(self._call_tpl % (key, key))

    def _on_text(self, conn: wsproto.WsConn, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        rid = msg.get("id")
        if not rid:
            return  # events (ringing, ...) are not part of this flow
        kind, key = rid[0], rid[1:]
        if kind == "x":
            fut = self._waiting.get(rid)
            if fut and not fut.done():
                fut.set_result(msg)
            return
        rec = self.calls.get(key)
        if rec is None:
            return
        mtype = msg.get("type")
        if kind == "q":
            if mtype == "callAccepted":
                now = time.perf_counter()
                rec[1] = now
                rec[2] = "confirmed"
                if self.step is not None:
                    self.step.latencies_ms.append((now - rec[0]) * 1000.0)
                rec[3].send_text(self._hangup_tpl % (key, key))
            else:
                payload = msg.get("payload") or {}
                self._fail(key, f"{mtype}:{payload.get('code')}")
        elif kind == "h":
            if mtype == "callEnded":
                self._ok(key)
            else:
                self._fail(key, f"hangup_{mtype}:{(msg.get('payload') or {}).get('code')}")

    async def register_storm(self, subscribers: list[tuple[str, str]], window: int = 100) -> dict:
        """Fresh connections (opened first, not timed), then `register` on each with at most `window`
        outstanding: registrations per second of the JSON register path."""
        conns: list[wsproto.WsConn] = []
        for i in range(0, len(subscribers), 200):
            conns += await asyncio.gather(*[wsproto.connect(self.host, self.port, on_text=self._on_text)
                                            for _ in subscribers[i:i + 200]])
        sem = asyncio.Semaphore(window)
        lat: list[float] = []
        fails: dict[str, int] = {}

        async def one(conn: wsproto.WsConn, dn: str, pw: str) -> None:
            async with sem:
                t = time.perf_counter()
                try:
                    reply = await self.request(conn, "register", {"dn": dn, "password": pw})
                    kind = reply.get("type")
                except asyncio.TimeoutError:
                    kind = "timeout"
                if kind == "registered":
                    lat.append((time.perf_counter() - t) * 1000.0)
                else:
                    fails[str(kind)] = fails.get(str(kind), 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*[one(c, dn, pw) for c, (dn, pw) in zip(conns, subscribers)])
        elapsed = time.perf_counter() - t0
        for c in conns:
            c.close()
        await asyncio.sleep(0.5)
        for c in conns:
            c.abort()
        return {"registrations": len(subscribers), "ok": len(lat), "failures": fails, "window": window,
                "elapsed_s": round(elapsed, 3), "per_s": round(len(lat) / elapsed, 1), "latency": lat_summary(lat)}


def _parse_sip(text: str) -> tuple[str, dict[str, list[str]]]:
    head = text.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n")
    hdrs: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            hdrs.setdefault(name.strip().lower(), []).append(value.strip())
    return lines[0], hdrs


_COMPACT = {"i": "call-id", "t": "to", "f": "from", "m": "contact", "v": "via", "l": "content-length"}


class SipLoad(_Base):
    """N SIP-over-WebSocket UAs (JsSIP style) calling through a proxy."""

    def __init__(self, host: str, port: int, nconns: int, dial: str = "6001") -> None:
        super().__init__(host, port, nconns)
        self.dial = dial
        self.sdp = CHROME_OFFER.encode()
        self.ruri = f"sip:{dial}@{host}:{port};transport=ws"
        self._waiting: dict[str, asyncio.Future] = {}

    async def setup(self) -> None:
        for n in range(self.nconns):
            conn = await wsproto.connect(self.host, self.port, on_text=self._on_text)
            conn.user = {"via_host": _rand(12) + ".invalid", "user": f"u{n}"}
            self.conns.append(conn)

    def start_call(self, conn: wsproto.WsConn) -> None:
        self.seq += 1
        key = f"b{self.seq}{_rand(6)}"
        u = conn.user
        ftag, branch = _rand(8), "z9hG4bK" + _rand(10)
        self.calls[key] = [time.perf_counter(), 0.0, "calling", conn, ftag, branch]
        conn.send_text(
            f"INVITE {self.ruri} SIP/2.0\r\n"
            f"Via: SIP/2.0/WS {u['via_host']};branch={branch}\r\n"
            "Max-Forwards: 69\r\n"
            f"To: <sip:{self.dial}@{self.host}>\r\n"
            f"From: \"Bench\" <sip:{u['user']}@{self.host}>;tag={ftag}\r\n"
            f"Call-ID: {key}\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:{u['user']}@{u['via_host']};transport=ws;ob>\r\n"
            "Allow: INVITE,ACK,CANCEL,BYE,OPTIONS\r\n"
            "Supported: outbound\r\n"
            "User-Agent: bench-sip-ws\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(self.sdp)}\r\n\r\n" + CHROME_OFFER)

    def _on_text(self, conn: wsproto.WsConn, text: str) -> None:
        first, hdrs = _parse_sip(text)
        if not first.startswith("SIP/2.0 "):
            return  # no requests are expected from the proxy in this flow
        status = int(first[8:11])
        call_id = (hdrs.get("call-id") or hdrs.get("i") or [""])[0]
        cseq = (hdrs.get("cseq") or ["0 X"])[0].split()
        method = cseq[1] if len(cseq) > 1 else ""
        if method == "REGISTER":
            fut = self._waiting.get(call_id)
            if fut and not fut.done():
                fut.set_result(status)
            return
        rec = self.calls.get(call_id)
        if rec is None:
            return
        if method == "INVITE":
            if status < 200:
                return
            if status >= 300:
                self._send_ack_non2xx(conn, call_id, rec, hdrs)
                self._fail(call_id, f"invite_{status}")
                return
            if rec[2] != "calling":
                return  # a retransmitted 200: the ACK below already went
            now = time.perf_counter()
            rec[1] = now
            rec[2] = "confirmed"
            if self.step is not None:
                self.step.latencies_ms.append((now - rec[0]) * 1000.0)
            self._ack_and_bye(conn, call_id, rec, hdrs)
        elif method == "BYE":
            if status >= 200:
                if status < 300:
                    self._ok(call_id)
                else:
                    self._fail(call_id, f"bye_{status}")

    def _ack_and_bye(self, conn: wsproto.WsConn, call_id: str, rec: list, hdrs: dict[str, list[str]]) -> None:
        rr: list[str] = []
        for value in hdrs.get("record-route", []):
            rr += [p.strip() if p.strip().endswith(">") else p.strip() + ">" for p in value.split(">,")]
        route = ", ".join(reversed(rr))
        contact = (hdrs.get("contact") or hdrs.get("m") or [""])[0]
        target = contact[contact.find("<") + 1:contact.find(">")] if "<" in contact else contact.split(";")[0]
        to = (hdrs.get("to") or hdrs.get("t"))[0]
        u = conn.user
        common = (f"Max-Forwards: 70\r\n"
                  + (f"Route: {route}\r\n" if route else "")
                  + f"To: {to}\r\nFrom: \"Bench\" <sip:{u['user']}@{self.host}>;tag={rec[4]}\r\n"
                  f"Call-ID: {call_id}\r\n")
        conn.send_text(f"ACK {target} SIP/2.0\r\nVia: SIP/2.0/WS {u['via_host']};branch=z9hG4bK{_rand(10)}\r\n"
                       + common + "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")
        rec[2] = "ending"
        conn.send_text(f"BYE {target} SIP/2.0\r\nVia: SIP/2.0/WS {u['via_host']};branch=z9hG4bK{_rand(10)}\r\n"
                       + common + "CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n")

    def _send_ack_non2xx(self, conn: wsproto.WsConn, call_id: str, rec: list, hdrs: dict[str, list[str]]) -> None:
        # Hop-by-hop ACK of a failure: the INVITE's branch and Request-URI, the reply's To tag.
        u = conn.user
        to = (hdrs.get("to") or hdrs.get("t") or [f"<sip:{self.dial}@{self.host}>"])[0]
        conn.send_text(f"ACK {self.ruri} SIP/2.0\r\nVia: SIP/2.0/WS {u['via_host']};branch={rec[5]}\r\n"
                       f"Max-Forwards: 70\r\nTo: {to}\r\nFrom: \"Bench\" <sip:{u['user']}@{self.host}>;tag={rec[4]}\r\n"
                       f"Call-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n")

    async def register_storm(self, count: int, window: int = 100, expires: int = 600) -> dict:
        """SIP REGISTER (no authentication) from `count` fresh WebSockets, at most `window` outstanding."""
        conns: list[wsproto.WsConn] = []
        for i in range(0, count, 200):
            conns += await asyncio.gather(*[wsproto.connect(self.host, self.port, on_text=self._on_text)
                                            for _ in range(i, min(count, i + 200))])
        sem = asyncio.Semaphore(window)
        lat: list[float] = []
        fails: dict[str, int] = {}

        async def one(n: int, conn: wsproto.WsConn) -> None:
            async with sem:
                host = _rand(12) + ".invalid"
                call_id = "r" + _rand(12)
                fut = asyncio.get_running_loop().create_future()
                self._waiting[call_id] = fut
                t = time.perf_counter()
                conn.send_text(
                    f"REGISTER sip:{self.host} SIP/2.0\r\n"
                    f"Via: SIP/2.0/WS {host};branch=z9hG4bK{_rand(10)}\r\n"
                    "Max-Forwards: 69\r\n"
                    f"To: <sip:r{n}@{self.host}>\r\n"
                    f"From: <sip:r{n}@{self.host}>;tag={_rand(8)}\r\n"
                    f"Call-ID: {call_id}\r\n"
                    "CSeq: 1 REGISTER\r\n"
                    f"Contact: <sip:r{n}@{host};transport=ws>;expires={expires}\r\n"
                    f"Expires: {expires}\r\n"
                    "Content-Length: 0\r\n\r\n")
                try:
                    status = await asyncio.wait_for(fut, 10)
                except asyncio.TimeoutError:
                    status = "timeout"
                finally:
                    self._waiting.pop(call_id, None)
                if status == 200:
                    lat.append((time.perf_counter() - t) * 1000.0)
                else:
                    fails[str(status)] = fails.get(str(status), 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*[one(n, c) for n, c in enumerate(conns)])
        elapsed = time.perf_counter() - t0
        for c in conns:
            c.close()
        await asyncio.sleep(0.5)
        for c in conns:
            c.abort()
        return {"registrations": count, "ok": len(lat), "failures": fails, "window": window,
                "elapsed_s": round(elapsed, 3), "per_s": round(len(lat) / elapsed, 1), "latency": lat_summary(lat)}
