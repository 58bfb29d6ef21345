#!/usr/bin/env python3
"""Call throughput and set-up latency: the gateway (JSON over WebSocket) against plain Kamailio
(SIP over WebSocket, bench/kamailio-plain.cfg), both calling the same SIPp UAS that answers at once.

Run from the repository root with the project's venv:

    .venv/bin/python bench/call_throughput.py            # default run, a few minutes
    .venv/bin/python bench/call_throughput.py --quick    # smoke run, well under a minute

What it does, all on 127.0.0.1, every process started here and stopped by its PID / process group:

1. starts one SIPp UAS (bench/sipp/uas_answer.xml), the gateway (kamailio/run-gateway.sh, embedded
   registrar with a generated subscriber file, GW_ECHO_URI pointing at SIPp so that dialling the
   echo extension 9196 is a trunk call to SIPp, abuse limits raised) and plain Kamailio;
2. for each: N WebSocket clients (gateway: each `register`s its own DN), then steps of a fixed
   number of calls at an increasing offered rate until a step has a failure or falls behind
   (achieved < 95 % of offered); one refinement step between the last good and the first bad rate;
3. set-up latency (gateway: `call` -> `callAccepted`; plain: INVITE -> 200) at half the gateway's
   sustained rate, for both, so that gateway minus plain is the latency the gateway adds;
4. registrations per second: fresh connections sending `register` (gateway) or REGISTER (plain);
5. prints a summary and writes bench/results/call_throughput.json (or --out).

CPU time (utime+stime from /proc) of Kamailio, SIPp and this load generator is recorded per step:
on a 2-core machine the three compete, so Kamailio CPU per call is the number to compare when the
load generator, not the server, is what saturates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (CpuMeter, GatewayProc, PlainKamailio, SippUas, loadavg, machine_info, make_subscribers,  # noqa: E402
                    process_roles, raise_nofile, snapshot_root, wait_for_low_load, write_results)
from loadgen import GatewayLoad, SipLoad, StepResult  # noqa: E402

PASS_RATIO = 0.95


def step_ok(step: StepResult) -> bool:
    return step.failed == 0 and step.achieved_cps >= PASS_RATIO * step.offered_cps


def busy(doc: dict, args) -> bool:
    return args.retry_busy > 0 and doc["cpu"]["other_cpu_s"] > args.retry_busy * doc["cpu"]["wall_s"]


def describe(name: str, step: StepResult, cpu: dict) -> str:
    s = step.summary()
    lat = s["setup_latency"]
    per_call = (cpu["kamailio_cpu_s"] * 1000.0 / step.ok) if step.ok else float("nan")
    return (f"  {name:8s} offered {s['offered_cps']:7.1f}/s sent {s['sent_cps']:7.1f}/s achieved {s['achieved_cps']:7.1f}/s "
            f"ok {s['ok']:5d} failed {s['failed']:4d}  p50 {lat['p50_ms']} p99 {lat['p99_ms']} ms  "
            f"cpu kam {cpu['kamailio_cpu_s']:.2f}s ({per_call:.3f} ms/call) sipp {cpu['sipp_cpu_s']:.2f}s "
            f"loadgen {cpu['self_cpu_s']:.2f}s other {cpu['other_cpu_s']:.2f}s / {cpu['wall_s']:.2f}s wall "
            f"{'OK' if step_ok(step) else 'FAIL'}")


ROLES: dict[int, str] = {}


async def measured_step(name: str, load, kam_pid: int, sipp_pid: int, rate: float, count: int) -> dict:
    meter = CpuMeter({"kamailio": kam_pid, "sipp": sipp_pid}, ROLES)
    meter.start()
    step = await load.run_step(rate, count)
    cpu = meter.stop()
    print(describe(name, step, cpu), flush=True)
    doc = step.summary()
    doc["pass"] = step_ok(step)
    doc["cpu"] = cpu
    doc["kamailio_cpu_ms_per_call"] = round(cpu["kamailio_cpu_s"] * 1000.0 / step.ok, 4) if step.ok else None
    doc["loadgen_cpu_share"] = round(cpu["self_cpu_s"] / cpu["wall_s"], 3) if cpu["wall_s"] else None
    doc["loadavg"] = loadavg()
    doc["_lat"] = step.latencies_ms  # raw, for pooling rounds; removed before writing
    return doc


async def find_max(name: str, load, kam_pid: int, sipp_pid: int, args, drain) -> dict:
    steps, rate, good, bad = [], args.start_rate, None, None

    async def step(at: int) -> dict:
        """One measured step at `at` calls/s (repeated once when other processes were busy)."""
        doc = await measured_step(name, load, kam_pid, sipp_pid, at, args.step_calls)
        doc.pop("_lat")
        steps.append(doc)
        await drain()
        if not doc["pass"] and busy(doc, args):
            # Other processes (test suites sharing the machine) took a good part of the CPU during
            # this step: try the same rate once more before calling it the limit.
            print(f"  (other processes used {doc['cpu']['other_cpu_s']:.1f}s CPU during that step: repeating it)")
            doc["retried_because_busy"] = True
            doc = await measured_step(name, load, kam_pid, sipp_pid, at, args.step_calls)
            doc.pop("_lat")
            doc["retry"] = True
            steps.append(doc)
            await drain()
        return doc

    for _ in range(args.max_steps):
        if (await step(rate))["pass"]:
            good = rate
            rate = round(rate * args.factor)
        else:
            bad = rate
            break
    for _ in range(args.refine):
        if good is None or bad is None or bad - good < 0.08 * good:
            break
        mid = round((good + bad) / 2)
        if (await step(mid))["pass"]:
            good = mid
        else:
            bad = mid
    best = max((s for s in steps if s["pass"]), key=lambda s: s["offered_cps"], default=None)
    return {
        "steps": steps,
        "max_sustained_cps": best["offered_cps"] if best else None,
        "max_sustained_achieved_cps": best["achieved_cps"] if best else None,
        "first_failing_cps": bad,
        "stopped_because": ("a step failed or fell behind" if bad is not None else "max_steps reached"),
        "loadgen_cpu_share_at_max": best["loadgen_cpu_share"] if best else None,
        "kamailio_cpu_ms_per_call_at_max": best["kamailio_cpu_ms_per_call"] if best else None,
    }


def _health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
        return json.loads(resp.read())


async def main(args) -> int:
    raise_nofile(65536)
    root = snapshot_root(args.root)
    workdir = Path(tempfile.mkdtemp(prefix="bench-calls-"))
    load_wait = wait_for_low_load(args.wait_load, args.max_wait) if args.wait_load else None
    doc: dict = {"benchmark": "call_throughput", "machine": machine_info(root), "workdir": str(workdir),
                 "params": {k: v for k, v in vars(args).items() if k not in ("out",)}, "load_wait": load_wait}
    print(f"call_throughput: root {root}, workdir {workdir}, load {loadavg()}")
    n_reg = args.registrations
    subs = make_subscribers(workdir / "subscribers.txt", args.conns + n_reg)
    sipp = SippUas(workdir).start()
    gw = plain = None
    try:
        gw = GatewayProc(root, workdir, children=args.children, shm_mb=args.shm_mb,
                         env={"GW_SUBSCRIBERS": str(workdir / "subscribers.txt"),
                              "GW_ECHO_URI": f"sip:127.0.0.1:{sipp.port}"}).start()
        plain = PlainKamailio(workdir, upstream=f"127.0.0.1:{sipp.port}", children=args.children,
                              shm_mb=args.shm_mb).start()
        ROLES.update(process_roles(gw.ctl))
        ROLES.update(process_roles(plain.ctl))
        doc["setup"] = {"children": args.children, "tcp_children": args.children, "shm_mb": args.shm_mb,
                        "conns": args.conns, "sipp_port": sipp.port, "gateway_pid": gw.pid, "plain_pid": plain.pid,
                        "gateway_env": {k: v for k, v in gw.proc.env.items() if k.startswith("GW_")}}

        g = GatewayLoad("127.0.0.1", gw.ws_port, subs[:args.conns])
        await g.setup()
        p = SipLoad("127.0.0.1", plain.ws_port, args.conns)
        await p.setup()

        async def drain_gw() -> None:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _health(gw.ws_port)["calls"]:
                await asyncio.sleep(0.2)
            await asyncio.sleep(args.pause)

        async def drain_plain() -> None:
            await asyncio.sleep(args.pause + 0.5)

        # Warm-up (interpreters, caches, SIPp), not recorded.
        await g.run_step(100, min(200, args.step_calls))
        await p.run_step(100, min(200, args.step_calls))
        await drain_gw()

        print("max sustained call rate (0 failures, achieved >= 95 % of offered):")
        doc["gateway"] = {"throughput": await find_max("gateway", g, gw.pid, sipp.pid, args, drain_gw)}
        doc["plain"] = {"throughput": await find_max("plain", p, plain.pid, sipp.pid, args, drain_plain)}

        gmax = doc["gateway"]["throughput"]["max_sustained_cps"]
        pmax = doc["plain"]["throughput"]["max_sustained_cps"]
        half = max(10, round((gmax or args.start_rate) / 2))
        print(f"set-up latency at {half}/s (half the gateway's sustained rate), {args.latency_calls} calls each:")
        lat_g, lat_p = [], []
        # Alternate in rounds so that a change of background load hits both.
        rounds = 2
        for r in range(rounds):
            lat_g.append(await measured_step("gateway", g, gw.pid, sipp.pid, half, args.latency_calls // rounds))
            await drain_gw()
            lat_p.append(await measured_step("plain", p, plain.pid, sipp.pid, half, args.latency_calls // rounds))
            await drain_plain()
        # Latencies of the rounds pooled.
        doc["gateway"]["latency_at_half"] = _pool(lat_g)
        doc["plain"]["latency_at_half_gateway_rate"] = _pool(lat_p)
        if pmax:
            phalf = max(10, round(pmax / 2))
            print(f"plain Kamailio at half its own sustained rate ({phalf}/s):")
            doc["plain"]["latency_at_own_half"] = await measured_step("plain", p, plain.pid, sipp.pid, phalf,
                                                                       args.latency_calls // rounds)
            doc["plain"]["latency_at_own_half"].pop("_lat")
            await drain_plain()

        print(f"registrations: {n_reg} fresh connections each, at most {args.reg_window} outstanding")
        meter = CpuMeter({"kamailio": gw.pid, "sipp": sipp.pid})
        meter.start()
        doc["gateway"]["registrations"] = await g.register_storm(subs[args.conns:args.conns + n_reg], args.reg_window)
        doc["gateway"]["registrations"]["cpu"] = meter.stop()
        print(f"  gateway  {doc['gateway']['registrations']}")
        meter = CpuMeter({"kamailio": plain.pid, "sipp": sipp.pid})
        meter.start()
        doc["plain"]["registrations"] = await p.register_storm(n_reg, args.reg_window)
        doc["plain"]["registrations"]["cpu"] = meter.stop()
        print(f"  plain    {doc['plain']['registrations']}")
        await g.close()
        await p.close()
        doc["sipp"] = sipp.stats()
    finally:
        for proc in (gw, plain):
            if proc:
                proc.stop()
        sipp.stop()

    gl, pl = doc["gateway"]["latency_at_half"]["setup_latency"], doc["plain"]["latency_at_half_gateway_rate"]["setup_latency"]
    added = {k: (round(gl[k] - pl[k], 3) if gl[k] is not None and pl[k] is not None else None)
             for k in ("p50_ms", "p95_ms", "p99_ms")}
    ratio = round(gmax / pmax, 3) if gmax and pmax else None
    gcpu = doc["gateway"]["throughput"]["kamailio_cpu_ms_per_call_at_max"]
    pcpu = doc["plain"]["throughput"]["kamailio_cpu_ms_per_call_at_max"]
    doc["summary"] = {
        "gateway_max_cps": gmax,
        "plain_max_cps": pmax,
        "ratio_gateway_over_plain": ratio,
        "latency_rate_cps": half,
        "gateway_setup_ms": gl,
        "plain_setup_ms": pl,
        "gateway_added_ms": added,
        "kamailio_cpu_ms_per_call": {"gateway": gcpu, "plain": pcpu,
                                     "ratio_plain_over_gateway": round(pcpu / gcpu, 3) if gcpu and pcpu else None},
        # Independent of what else runs on the machine: calls one fully used core of Kamailio would carry.
        "calls_per_kamailio_cpu_second": {"gateway": round(1000 / gcpu, 1) if gcpu else None,
                                          "plain": round(1000 / pcpu, 1) if pcpu else None},
        "gateway_registrations_per_s": doc["gateway"]["registrations"]["per_s"],
        "plain_registrations_per_s": doc["plain"]["registrations"]["per_s"],
        "targets": {
            "gateway_cps_at_least_half_of_plain": (ratio >= 0.5) if ratio is not None else None,
            "added_p50_at_most_1ms": (added["p50_ms"] <= 1.0) if added["p50_ms"] is not None else None,
            "added_p99_at_most_5ms": (added["p99_ms"] <= 5.0) if added["p99_ms"] is not None else None,
        },
    }
    print("\nsummary:")
    print(json.dumps(doc["summary"], indent=2))
    write_results("call_throughput" + ("-quick" if args.quick else ""), doc, Path(args.out) if args.out else None)
    return 0


def _pool(rounds: list[dict]) -> dict:
    """Merge the latency rounds (the per-round dicts keep their own percentiles)."""
    return {"rounds": rounds, "setup_latency": _merge_lat(rounds),
            "failed": sum(r["failed"] for r in rounds), "ok": sum(r["ok"] for r in rounds),
            "kamailio_cpu_ms_per_call": round(sum(r["cpu"]["kamailio_cpu_s"] for r in rounds) * 1000.0
                                              / max(1, sum(r["ok"] for r in rounds)), 4)}


def _merge_lat(rounds: list[dict]) -> dict:
    from common import lat_summary

    return lat_summary([x for r in rounds for x in r.pop("_lat", [])])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small steps, few connections")
    ap.add_argument("--conns", type=int, default=20, help="WebSocket clients placing calls (default 20)")
    ap.add_argument("--step-calls", type=int, default=1500, help="calls per rate step (default 1500)")
    ap.add_argument("--start-rate", type=float, default=100, help="first offered rate, calls/s (default 100)")
    ap.add_argument("--factor", type=float, default=1.4, help="rate multiplier between steps (default 1.4)")
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--refine", type=int, default=2, help="bisection steps after the first failure (default 2)")
    ap.add_argument("--latency-calls", type=int, default=3000, help="calls for the latency run, per system")
    ap.add_argument("--registrations", type=int, default=3000, help="fresh connections for the register run")
    ap.add_argument("--reg-window", type=int, default=100, help="outstanding registrations (default 100)")
    ap.add_argument("--children", type=int, default=2, help="Kamailio children and tcp_children (default 2)")
    ap.add_argument("--shm-mb", type=int, default=1024)
    ap.add_argument("--retry-busy", type=float, default=0.25,
                    help="repeat a failed step once when other processes used more than this share of the "
                         "wall time in CPU during it (default 0.25; 0 = never)")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between steps")
    ap.add_argument("--wait-load", type=float, default=0.0,
                    help="first wait until the 1-min load average is at most this (0 = don't wait)")
    ap.add_argument("--max-wait", type=float, default=600.0, help="longest wait for --wait-load, seconds")
    ap.add_argument("--root", help="tree under test (default: this repository)")
    ap.add_argument("--out", help="result file (default bench/results/call_throughput.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.conns = min(args.conns, 8)
        args.step_calls = 400
        args.start_rate = 100
        args.factor = 2.0
        args.max_steps = 4
        args.refine = 0
        args.latency_calls = 600
        args.registrations = 300
        args.pause = 0.5
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
