#!/usr/bin/env python3
"""Where the gateway's CPU goes: py-spy on the Kamailio workers under a fixed load.

    .venv/bin/pip install -r bench/requirements.txt      # py-spy
    .venv/bin/python bench/profile_gateway.py             # ~1 minute
    .venv/bin/python bench/profile_gateway.py --quick

Three phases against one gateway (same setup as call_throughput.py / capacity.py):
- calls: a steady call load (default 100 calls/s, `call` -> `callAccepted` -> `hangup`) to the
  SIPp UAS; py-spy records one TCP worker (JSON frames in) and one UDP worker (SIP replies in);
- pings: registered connections sending the protocol's `ping` (default 200/s); py-spy records a TCP worker;
- idle registrations: the 1 s housekeeping timer (rtimer process) with many registrations.
py-spy runs in its default sampling mode (`record --nonblocking`, Python frames only; time spent in
C code called from Python is charged to the Python line that called it). The raw collapsed stacks
go to bench/results/profile-<phase>-<role>.txt (named after --out when given), the top functions
(inclusive and own time) to bench/results/profile.json and the screen.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from capacity import Clients  # noqa: E402
from common import (REPO, RESULTS, CpuMeter, GatewayProc, SippUas, machine_info, make_subscribers,  # noqa: E402
                    process_roles, snapshot_root, wait_for_low_load, write_results)
from loadgen import GatewayLoad  # noqa: E402

PYSPY = os.environ.get("PYSPY", str(REPO / ".venv" / "bin" / "py-spy"))


def pyspy(pid: int, seconds: float, out: Path, rate: int = 250) -> subprocess.Popen:
    return subprocess.Popen([PYSPY, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
                             "--format", "raw", "-o", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def aggregate(path: Path, top: int = 25) -> dict:
    """Inclusive and own (leaf) sample shares per function from py-spy's collapsed stacks."""
    incl: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {"error": f"{path} missing"}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        names = []
        for f in frames:
            # "func (path/file.py:line)" -> "func (file.py)" for inclusive; keep the line for own time
            func, _, loc = f.partition(" (")
            names.append(f"{func} ({loc.split(':')[0].split('/')[-1].rstrip(')')})" if loc else func)
        for name in set(names):
            incl[name] += count
        leaf = frames[-1]
        func, _, loc = leaf.partition(" (")
        own[f"{func} ({loc.rsplit('/', 1)[-1]}" if loc else func] += count
    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "inclusive_percent": {k: round(v * 100 / total, 1) for k, v in incl.most_common(top)},
        "own_percent": {k: round(v * 100 / total, 1) for k, v in own.most_common(top)},
    }


def show(title: str, agg: dict, n: int = 12) -> None:
    print(f"\n== {title}: {agg.get('samples')} samples")
    if "own_percent" not in agg:
        print("  ", agg)
        return
    print("   own time (line where the process was):")
    for k, v in list(agg["own_percent"].items())[:n]:
        print(f"   {v:5.1f}%  {k}")
    print("   inclusive (time under the function):")
    for k, v in list(agg["inclusive_percent"].items())[:n]:
        print(f"   {v:5.1f}%  {k}")


async def main(args) -> int:
    root = snapshot_root(args.root)
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    load_wait = wait_for_low_load(args.wait_load, args.max_wait) if args.wait_load else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = Path(args.out).stem if args.out else "profile" + ("-quick" if args.quick else "")
    raw = RESULTS if not args.out else Path(args.out).parent
    doc: dict = {"benchmark": "profile_gateway", "machine": machine_info(root), "params": vars(args),
                 "load_wait": load_wait, "phases": {}}
    subs = make_subscribers(workdir / "subscribers.txt", args.conns + args.registrations)
    sipp = SippUas(workdir).start()
    gw = GatewayProc(root, workdir, children=args.children, shm_mb=max(1024, args.registrations // 5),
                     env={"GW_SUBSCRIBERS": str(workdir / "subscribers.txt"),
                          "GW_ECHO_URI": f"sip:127.0.0.1:{sipp.port}"})
    try:
        gw.start(timeout=60)
        roles = process_roles(gw.ctl)
        tcp = [p for p, r in roles.items() if r == "tcp_worker"]
        udp = [p for p, r in roles.items() if r == "udp_worker"]
        timer = [p for p, r in roles.items() if r == "rtimer"]

        # -- calls
        load = GatewayLoad("127.0.0.1", gw.ws_port, subs[:args.conns])
        await load.setup()
        await load.run_step(50, 100)
        count = int(args.call_rate * args.seconds)
        files = {"tcp_worker": raw / f"{stem}-calls-tcp_worker.txt", "udp_worker": raw / f"{stem}-calls-udp_worker.txt"}
        spies = [pyspy(tcp[0], args.seconds, files["tcp_worker"]), pyspy(udp[0], args.seconds, files["udp_worker"])]
        meter = CpuMeter({"kamailio": gw.pid, "sipp": sipp.pid}, roles)
        meter.start()
        step = await load.run_step(args.call_rate, count)
        cpu = meter.stop()
        for s in spies:
            s.wait(timeout=args.seconds + 30)
        doc["phases"]["calls"] = {"step": step.summary(), "cpu": cpu,
                                  "profiles": {r: aggregate(f) for r, f in files.items()}}
        print(f"calls at {args.call_rate}/s: {step.summary()}")
        print(f"cpu: {cpu}")
        for r in files:
            show(f"calls, {r}", doc["phases"]["calls"]["profiles"][r])
        await load.close()

        # -- pings
        clients = Clients(gw.ws_port, ["127.0.0.1"])
        await clients.open(args.registrations)
        await clients.register(subs[args.conns:args.conns + args.registrations])
        f_ping = raw / f"{stem}-pings-tcp_worker.txt"
        spy = pyspy(tcp[0], args.seconds, f_ping)
        meter = CpuMeter({"kamailio": gw.pid}, roles)
        meter.start()
        sent = await clients.client_pings(args.seconds, args.registrations / args.ping_rate)
        cpu = meter.stop()
        spy.wait(timeout=args.seconds + 30)
        doc["phases"]["pings"] = {"pings_sent": sent, "pongs": clients.pongs, "cpu": cpu,
                                  "tcp_worker_cpu_us_per_ping": round(cpu.get("kamailio_by_role_s", {}).get(
                                      "tcp_worker", 0) * 1e6 / max(1, clients.pongs), 1),
                                  "profiles": {"tcp_worker": aggregate(f_ping)}}
        print(f"\npings: {sent} sent, {clients.pongs} pongs; cpu {cpu}")
        show("pings, tcp_worker", doc["phases"]["pings"]["profiles"]["tcp_worker"])

        # -- idle: housekeeping timer with the registrations above
        f_timer = raw / f"{stem}-idle-rtimer.txt"
        spy = pyspy(timer[0], args.seconds, f_timer)
        meter = CpuMeter({"kamailio": gw.pid}, roles)
        meter.start()
        await asyncio.sleep(args.seconds)
        cpu = meter.stop()
        spy.wait(timeout=args.seconds + 30)
        doc["phases"]["idle"] = {"registrations": args.registrations, "cpu": cpu,
                                 "profiles": {"rtimer": aggregate(f_timer)}}
        print(f"\nidle with {args.registrations} registrations: cpu {cpu}")
        show("idle, rtimer", doc["phases"]["idle"]["profiles"]["rtimer"])
        await clients.close()
    finally:
        gw.stop()
        sipp.stop()
    write_results("profile" + ("-quick" if args.quick else ""), doc, Path(args.out) if args.out else None)
    return 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each profiled phase")
    ap.add_argument("--call-rate", type=float, default=100.0)
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--registrations", type=int, default=5000)
    ap.add_argument("--ping-rate", type=float, default=250.0, help="client pings per second in all")
    ap.add_argument("--children", type=int, default=2)
    ap.add_argument("--wait-load", type=float, default=0.0)
    ap.add_argument("--max-wait", type=float, default=600.0)
    ap.add_argument("--root")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds = 5.0
        args.registrations = 500
        args.ping_rate = 100.0
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
