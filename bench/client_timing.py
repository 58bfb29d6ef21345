#!/usr/bin/env python3
"""The browser client: library size, and the time from dial to the `call` frame leaving, in Chromium.

    .venv/bin/python bench/client_timing.py            # 7 runs per STUN setting
    .venv/bin/python bench/client_timing.py --quick    # 3 runs per STUN setting

1. Size of the minified library, and gzip -9 of it (as tests/browser/test_client_size.py measures):
   built from client/webrtc-custom.js into a temp file with the esbuild of client/node_modules and
   the command of client/package.json (so a stale client/dist cannot mislead), and the size of
   client/dist/webrtc-custom.min.js as `make client` left it (that file is the one the gateway serves
   to the browser below; this script never writes it).
2. Debian's Chromium (/usr/bin/chromium, GW_CHROMIUM to override) through Playwright's Python
   package, launched as tests/browser/conftest.py does (fake microphone, never a downloaded
   browser). A gateway (embedded registrar) serves the page and the library. Each run uses a fresh
   browser context: import /webrtc-custom.min.js, connect, register, then `gw.call(dn)`; the time is
   performance.now() at the call() to the moment WebSocket.send() is called with the `call` frame
   (a wrapper on WebSocket.prototype.send). Three settings of iceServers:
   - none: no STUN server;
   - stun-closed-port: stun:127.0.0.1:<a free UDP port> (nothing answers; ICMP port unreachable);
   - stun-blackhole: stun:203.0.113.1:3478 (TEST-NET-3: packets are dropped, no answer at all).
   The called DN is a subscriber that is not registered, so the call fails at once (480) after the
   frame has left; only the client side is measured. Median and max per setting.
Results: bench/results/client_timing.json.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (REPO, GatewayProc, free_port, loadavg, machine_info, make_subscribers, snapshot_root,  # noqa: E402
                    wait_for_low_load, write_results)

CHROMIUM = os.environ.get("GW_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]

RUN_JS = """
async ({url, ice, dn, pw, target}) => {
  const { GatewayClient } = await import('/webrtc-custom.min.js');
  let sentAt = null, t0 = null;
  const marks = {};
  const mark = (k) => { if (t0 !== null && !(k in marks)) marks[k] = performance.now() - t0; };
  const md = navigator.mediaDevices, gum = md.getUserMedia.bind(md);
  md.getUserMedia = async (c) => { const s = await gum(c); mark('getusermedia_ms'); return s; };
  const Pc = window.RTCPeerConnection;
  window.RTCPeerConnection = function (cfg) {
    const pc = new Pc(cfg);
    mark('peerconnection_ms');
    pc.addEventListener('icecandidate', (e) => e.candidate && e.candidate.candidate && mark('first_candidate_ms'));
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && mark('gathering_complete_ms'));
    const sld = pc.setLocalDescription.bind(pc);
    pc.setLocalDescription = async (...a) => { mark('set_local_start_ms'); const r = await sld(...a); mark('set_local_done_ms'); return r; };
    return pc;
  };
  window.RTCPeerConnection.prototype = Pc.prototype;
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (sentAt === null && typeof data === 'string' && data.includes('"type":"call"')) sentAt = performance.now();
    return send.call(this, data);
  };
  const gw = new GatewayClient(url, { iceServers: ice });
  await gw.connect();
  await gw.register(dn, pw);
  t0 = performance.now();
  const call = await gw.call(target);
  const resolved = performance.now();
  const outcome = await call.accepted.then(() => 'accepted', (e) => 'failed:' + (e.code || e.message));
  const timing = gw.timing(call.callId) || {};
  const candidates = (call.pc && call.pc.localDescription)
    ? (call.pc.localDescription.sdp.match(/^a=candidate/mg) || []).length : null;
  gw.close();
  WebSocket.prototype.send = send;
  return { dial_to_call_frame_ms: sentAt === null ? null : sentAt - t0, call_resolved_ms: resolved - t0,
           gather_ms: timing.gatherMs ?? null, offer_ready_ms: timing.offerReadyMs ?? null,
           candidates_in_offer: candidates, outcome, marks };
}
"""


def esbuild_bin(root: Path) -> Path | None:
    for base in (root, REPO):
        exe = base / "client" / "node_modules" / ".bin" / "esbuild"
        if exe.exists():
            return exe
    return None


def fresh_build(root: Path) -> bytes | None:
    """The library minified from the tree's current source into a temp file, with the command of
    client/package.json (`npm run build`), so that a stale client/dist cannot mislead; None without esbuild."""
    exe, src = esbuild_bin(root), root / "client" / "webrtc-custom.js"
    if exe is None or not src.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "webrtc-custom.min.js"
        res = subprocess.run([str(exe), str(src), "--bundle", "--minify", "--format=esm", f"--outfile={out}",
                              "--log-level=error"], capture_output=True, text=True, timeout=60)
        return out.read_bytes() if res.returncode == 0 and out.exists() else None


def library_size(root: Path) -> dict:
    path = root / "client" / "dist" / "webrtc-custom.min.js"
    src = root / "client" / "webrtc-custom.js"
    doc: dict = {"path": str(path), "source_bytes": src.stat().st_size if src.exists() else None}
    fresh = fresh_build(root)
    if fresh is not None:
        doc["fresh_build"] = {"minified_bytes": len(fresh), "gzip9_bytes": len(gzip.compress(fresh, 9))}
    if path.exists():
        data = path.read_bytes()
        doc["dist"] = {"minified_bytes": len(data), "gzip9_bytes": len(gzip.compress(data, 9)),
                       "same_as_fresh_build": (data == fresh) if fresh is not None else None}
    measured = doc.get("fresh_build") or doc.get("dist")
    if measured is None:
        doc["error"] = "no client/dist/webrtc-custom.min.js (run `make client`) and no esbuild to build one"
        return doc
    doc["minified_bytes"], doc["gzip9_bytes"] = measured["minified_bytes"], measured["gzip9_bytes"]
    doc["measured_from"] = "fresh_build" if "fresh_build" in doc else "dist"
    doc["targets"] = {"minified_at_most_10KB": doc["minified_bytes"] <= 10 * 1024,
                      "gzip_at_most_4KB": doc["gzip9_bytes"] <= 4 * 1024}
    return doc


def _fmt(marks: dict | None) -> str:
    return " ".join(f"{k.removesuffix('_ms')}={v:.0f}" for k, v in sorted((marks or {}).items(), key=lambda kv: kv[1]))


def summarize(runs: list[dict]) -> dict:
    vals = [r["dial_to_call_frame_ms"] for r in runs if r.get("dial_to_call_frame_ms") is not None]
    gathers = [r["gather_ms"] for r in runs if r.get("gather_ms") is not None]
    marks: dict[str, float] = {}
    for key in ("getusermedia_ms", "peerconnection_ms", "set_local_start_ms", "set_local_done_ms",
                "first_candidate_ms", "gathering_complete_ms"):
        vs = [r["marks"][key] for r in runs if key in (r.get("marks") or {})]
        if vs:
            marks[key] = round(statistics.median(vs), 1)
    return {
        "runs": len(runs),
        "measured": len(vals),
        "median_ms": round(statistics.median(vals), 1) if vals else None,
        "max_ms": round(max(vals), 1) if vals else None,
        "min_ms": round(min(vals), 1) if vals else None,
        "first_run_ms": round(vals[0], 1) if vals else None,
        "gather_median_ms": round(statistics.median(gathers), 1) if gathers else None,
        "median_milestones_ms": marks,
        "at_most_300ms_all_runs": bool(vals) and len(vals) == len(runs) and max(vals) <= 300,
    }


def main(args) -> int:
    root = snapshot_root(args.root)
    workdir = Path(tempfile.mkdtemp(prefix="bench-client-"))
    load_wait = wait_for_low_load(args.wait_load, args.max_wait) if args.wait_load else None
    doc: dict = {"benchmark": "client_timing", "machine": machine_info(root), "params": vars(args),
                 "load_wait": load_wait}
    size = library_size(root)
    doc["library"] = size
    if "error" in size:
        print(f"library: {size['error']}")
    else:
        print(f"library: {size['minified_bytes']} bytes minified, {size['gzip9_bytes']} bytes gzip -9 "
              f"({size['measured_from']}; client/dist: {size.get('dist')})")
    if not Path(CHROMIUM).exists():
        doc["chromium"] = {"error": f"{CHROMIUM} missing"}
        write_results("client_timing" + ("-quick" if args.quick else ""), doc)
        return 1
    from playwright.sync_api import sync_playwright

    subs = make_subscribers(workdir / "subscribers.txt", 2 * args.runs * 3 + 2)
    callee = subs[-1][0]  # a subscriber nobody registers: the call fails at once, after the frame left
    settings = {
        "none": [],
        "stun-closed-port": [{"urls": f"stun:127.0.0.1:{free_port()}"}],
        "stun-blackhole": [{"urls": "stun:203.0.113.1:3478"}],
    }
    gw = GatewayProc(root, workdir, env={"GW_SUBSCRIBERS": str(workdir / "subscribers.txt")}).start()
    results: dict = {name: [] for name in settings}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            try:
                doc["chromium_version"] = browser.version
                n = 0
                # Interleaved, so that a change of machine load hits every setting alike.
                for i in range(args.runs):
                    for name, ice in settings.items():
                        dn, password = subs[n]
                        n += 1
                        context = browser.new_context(permissions=["microphone"])
                        try:
                            page = context.new_page()
                            page.goto(f"http://127.0.0.1:{gw.ws_port}/health")
                            run = page.evaluate(RUN_JS, {"url": f"ws://127.0.0.1:{gw.ws_port}/", "ice": ice,
                                                         "dn": dn, "pw": password, "target": callee})
                        finally:
                            context.close()
                        run["loadavg"] = loadavg()[0]
                        results[name].append(run)
                        print(f"  run {i + 1} {name:17s} dial -> call frame {run['dial_to_call_frame_ms']:.1f} ms "
                              f"(ICE wait {run['gather_ms']} ms, {run['candidates_in_offer']} candidates, "
                              f"{run['outcome']}) milestones {_fmt(run.get('marks'))}", flush=True)
            finally:
                browser.close()
    finally:
        gw.stop()
    doc["chromium"] = {name: {"summary": summarize(runs), "runs": runs} for name, runs in results.items()}
    doc["summary"] = {
        "library": {k: size.get(k) for k in ("minified_bytes", "gzip9_bytes", "targets")},
        "dial_to_call_frame": {name: v["summary"] for name, v in doc["chromium"].items()},
        "targets": {
            "call_frame_within_300ms_with_unreachable_stun": all(
                doc["chromium"][n]["summary"]["at_most_300ms_all_runs"] for n in ("stun-closed-port", "stun-blackhole")),
        },
    }
    import json

    print("\nsummary:")
    print(json.dumps(doc["summary"], indent=2))
    write_results("client_timing" + ("-quick" if args.quick else ""), doc, Path(args.out) if args.out else None)
    return 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 runs per setting")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--wait-load", type=float, default=0.0)
    ap.add_argument("--max-wait", type=float, default=600.0)
    ap.add_argument("--root", help="tree under test (default: this repository)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs = 3
    return args


if __name__ == "__main__":
    sys.exit(main(parse_args()))
