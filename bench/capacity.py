#!/usr/bin/env python3
"""Capacity: memory per registered idle WebSocket and the CPU of keep-alives, at growing connection counts.

    .venv/bin/python bench/capacity.py                 # levels 1000, 5000, 10000 (a few minutes)
    .venv/bin/python bench/capacity.py --quick         # levels 100, 300, 1000, short windows
    .venv/bin/python bench/capacity.py --levels 2000,20000 --source-ips 4
    .venv/bin/python bench/capacity.py --plain-only --levels 1000 --plain-rd-buf 4096

One gateway (kamailio/run-gateway.sh, embedded registrar, a generated subscriber file with one DN
per connection, abuse limits raised, shared memory GW_SHM_MB sized for the top level, a ctl socket
added on the command line for kamcmd). The load generator raises its own RLIMIT_NOFILE (Kamailio,
started from it, inherits the limit) and opens connections up to each level from one asyncio
process (several 127.0.0.x source addresses with --source-ips), each one `register`ing its own DN.

At each level, after the connections are registered and the gateway has settled:
- memory: Kamailio shared memory in use (`kamcmd core.shmmem`: used / real_used), private (pkg)
  memory of every process (`kamcmd pkg.stats`), and RSS / PSS / private pages summed over all
  Kamailio processes (/proc/<pid>/smaps_rollup); per connection = (level - baseline) / connections;
- idle CPU, two windows: (a) clients silent, so only the gateway's WebSocket keepalive (Ping after
  30 s idle, answered by the client's Pong) and its 1 s housekeeping timer run; (b) clients send the
  protocol's `ping` every 20 s as the browser library does (pingIntervalMs), which keeps
  connections from ever being idle 30 s. CPU is utime+stime from /proc/<pid>/stat, by process role.

With --plain, plain Kamailio (bench/kamailio-plain.cfg, same core TCP settings) gets the same number of
WebSocket connections (no registration) for its memory per connection: the part of the cost that
is Kamailio's own TCP/WebSocket buffers, whatever runs on top.
Results: bench/results/capacity.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import wsproto  # noqa: E402
from common import (CpuMeter, GatewayProc, PlainKamailio, children_of, loadavg, machine_info,  # noqa: E402
                    make_subscribers, mem_rollup, pkg_stats, process_roles, raise_nofile, shm_stats, snapshot_root,
                    wait_for_low_load, write_results)


def memory(ctl: Path, pid: int) -> dict:
    shm = shm_stats(ctl)
    pkg = pkg_stats(ctl)
    return {
        "shm_used": shm.get("used"),
        "shm_real_used": shm.get("real_used"),
        "shm_total": shm.get("total"),
        "pkg_used_sum": sum(p.get("used", 0) for p in pkg),
        "pkg_real_used_sum": sum(p.get("real_used", 0) for p in pkg),
        "pkg_processes": len(pkg),
        "proc": mem_rollup(children_of(pid)),
    }


LOG_PATTERNS = {
    "tcp_child_queue_full": "queue full",
    "send_fd_failed": "send_fd failed",
    "ws_keepalive_forcibly_closed": "forcibly closing connection",
    "ws_send_on_closing": "sending on closing connection",
    "shm_out_of_memory": "no more shm",
    "pkg_out_of_memory": "no more pkg",
}


def log_counts(path: Path) -> dict:
    """Counts of Kamailio log lines that mean trouble under load (see LOG_PATTERNS)."""
    counts = dict.fromkeys(LOG_PATTERNS, 0)
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if "ERROR" in line or "CRITICAL" in line or "WARNING" in line:
                    for k, pat in LOG_PATTERNS.items():
                        if pat in line:
                            counts[k] += 1
    except OSError:
        pass
    return counts


def per_conn(cur: dict, base: dict, n: int) -> dict:
    if n <= 0:
        return {}
    return {
        "shm_used_bytes": round((cur["shm_used"] - base["shm_used"]) / n),
        "shm_real_used_bytes": round((cur["shm_real_used"] - base["shm_real_used"]) / n),
        "pkg_used_bytes": round((cur["pkg_used_sum"] - base["pkg_used_sum"]) / n),
        "rss_bytes": round((cur["proc"]["rss_kb"] - base["proc"]["rss_kb"]) * 1024 / n),
        "pss_bytes": round((cur["proc"]["pss_kb"] - base["proc"]["pss_kb"]) * 1024 / n),
        "private_bytes": round((cur["proc"]["private_kb"] - base["proc"]["private_kb"]) * 1024 / n),
    }


class Clients:
    def __init__(self, port: int, source_ips: list[str]) -> None:
        self.port = port
        self.source_ips = source_ips
        self.conns: list[wsproto.WsConn] = []
        self.waiting: dict[str, asyncio.Future] = {}
        self.pongs = 0
        self.seq = 0

    def on_text(self, conn: wsproto.WsConn, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if msg.get("type") == "pong":
            self.pongs += 1
        fut = self.waiting.get(msg.get("id") or "")
        if fut and not fut.done():
            fut.set_result(msg)

    async def open(self, n: int, batch: int = 200) -> float:
        t0 = time.perf_counter()
        while len(self.conns) < n:
            k = min(batch, n - len(self.conns))
            base = len(self.conns)
            self.conns += await asyncio.gather(*[
                wsproto.connect("127.0.0.1", self.port, on_text=self.on_text,
                                local_ip=self.source_ips[(base + i) % len(self.source_ips)])
                for i in range(k)])
        return time.perf_counter() - t0

    async def register(self, subs: list[tuple[str, str]], window: int = 200) -> tuple[float, dict]:
        sem = asyncio.Semaphore(window)
        fails: dict[str, int] = {}

        async def one(conn: wsproto.WsConn, dn: str, pw: str) -> None:
            async with sem:
                self.seq += 1
                rid = f"r{self.seq}"
                fut = asyncio.get_running_loop().create_future()
                self.waiting[rid] = fut
                conn.send_text(json.dumps({"type": "register", "id": rid, "payload": {"dn": dn, "password": pw}}))
                try:
                    reply = await asyncio.wait_for(fut, 30)
                    kind = reply.get("type")
                except asyncio.TimeoutError:
                    kind = "timeout"
                finally:
                    self.waiting.pop(rid, None)
                if kind != "registered":
                    fails[str(kind)] = fails.get(str(kind), 0) + 1

        todo = [(c, dn, pw) for c, (dn, pw) in zip(self.conns, subs) if c.user is None]
        for c, _, _ in todo:
            c.user = "registered"
        t0 = time.perf_counter()
        await asyncio.gather(*[one(*t) for t in todo])
        return time.perf_counter() - t0, fails

    def pings(self) -> int:
        return sum(c.pings for c in self.conns)

    def open_count(self) -> int:
        return sum(1 for c in self.conns if c.is_open)

    async def client_pings(self, seconds: float, interval: float) -> int:
        """Every connection sends `ping` once per `interval` s, spread evenly, for `seconds`."""
        n = len(self.conns)
        if not n:
            return 0
        rate = n / interval
        sent, t0 = 0, time.perf_counter()
        while True:
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
            due = int(elapsed * rate) + 1
            while sent < due:
                conn = self.conns[sent % n]
                if conn.is_open:
                    self.seq += 1
                    conn.send_text('{"type":"ping","id":"p%d"}' % self.seq)
                sent += 1
            await asyncio.sleep(min(0.05, max(0.0, t0 + sent / rate - time.perf_counter())))
        return sent

    async def close(self) -> None:
        for c in self.conns:
            c.close()
        await asyncio.sleep(1.0)
        for c in self.conns:
            c.abort()
        self.conns = []


async def idle_window(gw: GatewayProc, clients: Clients, seconds: float, roles: dict, client_ping: float) -> dict:
    meter = CpuMeter({"kamailio": gw.pid}, roles)
    pings0, pongs0 = clients.pings(), clients.pongs
    meter.start()
    sent = 0
    if client_ping:
        sent = await clients.client_pings(seconds, client_ping)
    else:
        await asyncio.sleep(seconds)
    cpu = meter.stop()
    ws_pings = clients.pings() - pings0
    kam = cpu["kamailio_cpu_s"]
    doc = {
        "seconds": seconds,
        "cpu": cpu,
        "kamailio_cpu_percent_of_one_core": round(kam / cpu["wall_s"] * 100, 2),
        "server_ws_pings_received": ws_pings,
        "client_json_pings_sent": sent,
        "client_json_pongs_received": clients.pongs - pongs0,
        "open_connections_after": clients.open_count(),
    }
    events = ws_pings + (clients.pongs - pongs0)
    roles = cpu.get("kamailio_by_role_s", {})
    # The keep-alive path: the worker reading the frame (JSON ping or WebSocket Pong), tcp_main handing
    # connections to workers, the websocket keepalive process sending Pings. The 1 s housekeeping
    # timer (rtimer) runs whatever the clients do and is reported on its own.
    path = sum(roles.get(r, 0.0) for r in ("tcp_worker", "tcp_main", "ws_keepalive"))
    doc["keepalive_path_cpu_s"] = round(path, 3)
    doc["housekeeping_timer_cpu_s"] = roles.get("rtimer", 0.0)
    doc["housekeeping_timer_percent_of_one_core"] = round(roles.get("rtimer", 0.0) / cpu["wall_s"] * 100, 2)
    if events:
        doc["keepalive_path_cpu_us_per_keepalive"] = round(path * 1e6 / events, 1)
    return doc


async def main(args) -> int:
    levels = sorted(int(x) for x in args.levels.split(","))
    top = levels[-1]
    nofile = raise_nofile(max(65536, top * 2 + 4096))
    root = snapshot_root(args.root)
    workdir = Path(tempfile.mkdtemp(prefix="bench-capacity-"))
    load_wait = wait_for_low_load(args.wait_load, args.max_wait) if args.wait_load else None
    source_ips = [f"127.0.0.{i + 1}" for i in range(args.source_ips)]
    shm_mb = args.shm_mb or max(512, int(top * 200 / 1024) + 256)  # ~200 KB per connection of headroom
    doc: dict = {"benchmark": "capacity", "machine": machine_info(root), "workdir": str(workdir),
                 "params": {**vars(args), "shm_mb": shm_mb, "nofile": nofile}, "load_wait": load_wait, "levels": []}
    print(f"capacity: levels {levels}, shm {shm_mb} MB, RLIMIT_NOFILE {nofile}, load {loadavg()}, workdir {workdir}")
    if args.plain_only:
        doc["plain"] = await plain_memory(workdir, levels, shm_mb, args, source_ips)
        doc["summary"] = {"plain_tcp_rd_buf_size": args.plain_rd_buf,
                          "plain_per_connection": [{"connections": e["connections"], **e["per_connection"]}
                                                   for e in doc["plain"]["levels"]]}
        print(json.dumps(doc["summary"], indent=2))
        write_results(f"capacity-plain-rdbuf-{args.plain_rd_buf}", doc, Path(args.out) if args.out else None)
        return 0
    subs = make_subscribers(workdir / "subscribers.txt", top)
    gw = GatewayProc(root, workdir, children=args.children, shm_mb=shm_mb,
                     env={"GW_SUBSCRIBERS": str(workdir / "subscribers.txt")})
    clients = None
    try:
        gw.start(timeout=60)
        roles = process_roles(gw.ctl)
        doc["setup"] = {"gateway_pid": gw.pid, "children": args.children, "shm_mb": shm_mb,
                        "kamailio_nofile": _nofile(gw.pid), "source_ips": source_ips}
        await asyncio.sleep(2)
        base = memory(gw.ctl, gw.pid)
        doc["baseline"] = base
        print(f"baseline: shm used {base['shm_used'] / 1e6:.1f} MB, pkg used {base['pkg_used_sum'] / 1e6:.1f} MB, "
              f"RSS {base['proc']['rss_kb'] / 1024:.1f} MB, PSS {base['proc']['pss_kb'] / 1024:.1f} MB")
        clients = Clients(gw.ws_port, source_ips)
        for level in levels:
            t_open = await clients.open(level)
            t_reg, fails = await clients.register(subs[:level], args.reg_window)
            await asyncio.sleep(args.settle)
            mem = memory(gw.ctl, gw.pid)
            health = _health(gw.ws_port)
            entry = {
                "connections": level,
                "open_connections": clients.open_count(),
                "gateway_health": health,
                "open_s": round(t_open, 2),
                "register_s": round(t_reg, 2),
                "registrations_per_s": round(level / t_reg, 1) if t_reg else None,
                "register_failures": fails,
                "memory": mem,
                "per_connection": per_conn(mem, base, level),
                "loadavg": loadavg(),
            }
            pc = entry["per_connection"]
            print(f"{level:6d} connections (open {entry['open_connections']}, registered {health.get('registrations')}): "
                  f"opened in {t_open:.1f}s, registered in {t_reg:.1f}s; per connection: shm {pc['shm_real_used_bytes']} B, "
                  f"pkg {pc['pkg_used_bytes']} B, RSS {pc['rss_bytes']} B, PSS {pc['pss_bytes']} B", flush=True)
            if args.idle:
                entry["idle_server_keepalive"] = await idle_window(gw, clients, args.idle, roles, 0)
                w = entry["idle_server_keepalive"]
                print(f"        idle {args.idle:.0f}s, clients silent: kamailio CPU {w['cpu']['kamailio_cpu_s']:.2f}s "
                      f"({w['kamailio_cpu_percent_of_one_core']}% of a core), {w['server_ws_pings_received']} "
                      f"WebSocket pings ({w.get('keepalive_path_cpu_us_per_keepalive')} us each, keep-alive path), "
                      f"other load {w['cpu']['other_cpu_s']:.2f}s; by role {w['cpu'].get('kamailio_by_role_s')}",
                      flush=True)
            if args.client_ping_window:
                entry["idle_client_ping"] = await idle_window(gw, clients, args.client_ping_window, roles,
                                                              args.client_ping)
                w = entry["idle_client_ping"]
                print(f"        {args.client_ping_window:.0f}s with a client ping every {args.client_ping:.0f}s: "
                      f"kamailio CPU {w['cpu']['kamailio_cpu_s']:.2f}s ({w['kamailio_cpu_percent_of_one_core']}% of a core), "
                      f"{w['client_json_pongs_received']} pongs, {w['server_ws_pings_received']} WebSocket pings, "
                      f"{w.get('keepalive_path_cpu_us_per_keepalive')} us each (keep-alive path); by role {w['cpu'].get('kamailio_by_role_s')}",
                      flush=True)
            entry["kamailio_log_counts_so_far"] = log_counts(gw.proc.log_path)
            if any(entry["kamailio_log_counts_so_far"].values()):
                print(f"        Kamailio log so far: {entry['kamailio_log_counts_so_far']}", flush=True)
            doc["levels"].append(entry)
        await clients.close()
        clients = None
    finally:
        if clients:
            await clients.close()
        gw.stop()

    if args.plain:
        doc["plain"] = await plain_memory(workdir, levels, shm_mb, args, source_ips)

    top_entry = doc["levels"][-1]
    per = top_entry["per_connection"]
    doc["summary"] = {
        "levels": [{"connections": e["connections"], "open": e["open_connections"],
                    "registered": e["gateway_health"].get("registrations"),
                    "per_connection": e["per_connection"],
                    "shm_real_used_mb": round(e["memory"]["shm_real_used"] / 1e6, 1),
                    "rss_mb": round(e["memory"]["proc"]["rss_kb"] / 1024, 1),
                    "pss_mb": round(e["memory"]["proc"]["pss_kb"] / 1024, 1),
                    "idle_cpu_percent_server_keepalive": (e.get("idle_server_keepalive") or {}).get(
                        "kamailio_cpu_percent_of_one_core"),
                    "idle_cpu_percent_client_ping_20s": (e.get("idle_client_ping") or {}).get(
                        "kamailio_cpu_percent_of_one_core"),
                    "registrations_per_s": e["registrations_per_s"],
                    "open_after_windows": (e.get("idle_client_ping") or e.get("idle_server_keepalive") or {}).get(
                        "open_connections_after", e["open_connections"]),
                    "kamailio_log_counts_so_far": e["kamailio_log_counts_so_far"]} for e in doc["levels"]],
        "targets": {
            "10000_registered_connections": (top >= 10000 and top_entry["open_connections"] >= 10000
                                             and top_entry["gateway_health"].get("registrations", 0) >= 10000
                                             and (top_entry.get("idle_client_ping") or top_entry.get(
                                                 "idle_server_keepalive") or {}).get("open_connections_after",
                                                                                     top_entry["open_connections"]) >= 10000),
            "at_most_16KB_per_connection": {
                "by_shm_real_used": per["shm_real_used_bytes"] <= 16 * 1024,
                "by_pss": per["pss_bytes"] <= 16 * 1024,
            },
        },
    }
    if "plain" in doc:
        doc["summary"]["plain_per_connection"] = [{"connections": e["connections"], **e["per_connection"]}
                                                  for e in doc["plain"]["levels"]]
    print("\nsummary:")
    print(json.dumps(doc["summary"], indent=2))
    write_results("capacity" + ("-quick" if args.quick else ""), doc, Path(args.out) if args.out else None)
    return 0


async def plain_memory(workdir: Path, levels: list[int], shm_mb: int, args, source_ips: list[str]) -> dict:
    """The same connection counts on plain Kamailio: its memory per WebSocket (no registration)."""
    plain = PlainKamailio(workdir, upstream="127.0.0.1:9", children=args.children, shm_mb=shm_mb,
                          rd_buf=args.plain_rd_buf).start()
    out: dict = {"levels": []}
    conns = None
    try:
        await asyncio.sleep(1)
        base = memory(plain.ctl, plain.pid)
        out["baseline"] = base
        conns = Clients(plain.ws_port, source_ips)
        for level in levels:
            await conns.open(level)
            await asyncio.sleep(args.settle)
            mem = memory(plain.ctl, plain.pid)
            pc = per_conn(mem, base, level)
            out["levels"].append({"connections": level, "open_connections": conns.open_count(), "memory": mem,
                                  "per_connection": pc})
            print(f"plain {level:6d} WebSockets: per connection shm {pc['shm_real_used_bytes']} B, "
                  f"pkg {pc['pkg_used_bytes']} B, RSS {pc['rss_bytes']} B, PSS {pc['pss_bytes']} B", flush=True)
        await conns.close()
        conns = None
    finally:
        if conns:
            await conns.close()
        plain.stop()
    return out


def _health(port: int) -> dict:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as resp:
            return json.loads(resp.read())
    except OSError as exc:
        return {"error": str(exc)}


def _nofile(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    except OSError:
        pass
    return "?"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 100, 300, 1000 connections, short windows")
    ap.add_argument("--levels", default="1000,5000,10000", help="connection counts, comma-separated")
    ap.add_argument("--idle", type=float, default=36.0,
                    help="idle window with silent clients, s (default 36: every connection gets one keepalive Ping)")
    ap.add_argument("--client-ping-window", type=float, default=20.0,
                    help="window with client pings, s (default 20; 0 = skip)")
    ap.add_argument("--client-ping", type=float, default=20.0, help="client ping interval, s (the library's 20)")
    ap.add_argument("--source-ips", type=int, default=1, help="spread connections over 127.0.0.1..N")
    ap.add_argument("--reg-window", type=int, default=200, help="outstanding registrations")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds before measuring memory")
    ap.add_argument("--children", type=int, default=2)
    ap.add_argument("--shm-mb", type=int, default=0, help="Kamailio shared memory (default: sized for the top level)")
    ap.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure plain Kamailio's memory per WebSocket (default on)")
    ap.add_argument("--plain-only", action="store_true",
                    help="only plain Kamailio's memory per WebSocket (results/capacity-plain-rdbuf-N.json)")
    ap.add_argument("--plain-rd-buf", type=int, default=65536,
                    help="tcp_rd_buf_size of plain Kamailio (default 65536, as kamailio/kamailio.cfg)")
    ap.add_argument("--wait-load", type=float, default=0.0)
    ap.add_argument("--max-wait", type=float, default=600.0)
    ap.add_argument("--root", help="tree under test (default: this repository)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.levels = "100,300,1000" if args.levels == "1000,5000,10000" else args.levels
        args.idle = 6.0
        args.client_ping_window = 4.0
        args.client_ping = 2.0
        args.settle = 1.0
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
