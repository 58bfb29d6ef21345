"""Shared helpers of the benchmark scripts (bench/*.py).

- paths: the tree under test (`--root`, default the repository holding bench/) and the test harness
  (tests/harness) reused for free ports;
- processes: Kamailio (the gateway through kamailio/run-gateway.sh, or plain Kamailio with
  bench/kamailio-plain.cfg) and SIPp, each started in its own session and stopped by its PID /
  process group (never by name);
- /proc readings: CPU (utime+stime) and memory (RSS, PSS, private) of a process tree;
- kamcmd over a ctl socket the gateway is started with (`--loadmodule=ctl.so` on the command line,
  so kamailio.cfg needs no change);
- results: percentiles and the JSON document written to bench/results/.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

sys.path.insert(0, str(REPO / "tests"))
from harness.ports import free_port  # noqa: E402  (reused, not modified)

KAMAILIO = os.environ.get("KAMAILIO", "/usr/sbin/kamailio")
SIPP = os.environ.get("SIPP_BIN", "sipp")
KAMCMD = os.environ.get("KAMCMD", "/usr/sbin/kamcmd")


# ---------------------------------------------------------------- machine / results


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine_info(root: Path) -> dict:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "mem_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
        "root": str(root),
    }
    try:
        info["kamailio"] = subprocess.run([KAMAILIO, "-v"], capture_output=True, text=True, timeout=5).stdout.split("\n")[0]
    except OSError:
        pass
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode == 0:
            info["git_head"] = head.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "kemi", "kamailio"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            info["git_dirty_kemi_or_cfg"] = bool(dirty)
    except OSError:
        pass
    snap = root / ".bench-snapshot"
    if snap.exists():
        info["snapshot_of"] = snap.read_text().strip()
    return info


def write_results(name: str, doc: dict, out: Path | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc.setdefault("machine", {})["loadavg_end"] = loadavg()
    path = out or RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    print(f"\nresults written to {path}")
    return path


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of `values`; None when empty."""
    if not values:
        return None
    data = sorted(values)
    k = max(0, min(len(data) - 1, int(round(p / 100.0 * len(data) + 0.5)) - 1))
    return data[k]


def lat_summary(ms: list[float]) -> dict:
    return {
        "n": len(ms),
        "p50_ms": _r(percentile(ms, 50)),
        "p95_ms": _r(percentile(ms, 95)),
        "p99_ms": _r(percentile(ms, 99)),
        "max_ms": _r(max(ms) if ms else None),
    }


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE of this process (soft and, as root, hard) to `want`; return the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            want = hard
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- /proc


def children_of(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        parent[int(entry)] = int(fields[1])
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in parent or p == pid:
            tree.append(p)
            todo.extend(c for c, pp in parent.items() if pp == p)
    return sorted(set(tree))


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out[pid] = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return out


def proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def mem_rollup(pids: list[int]) -> dict:
    """Summed smaps_rollup of `pids` in KB: Rss, Pss, Private_Clean+Private_Dirty, Shared_*."""
    total = {"rss_kb": 0, "pss_kb": 0, "private_kb": 0, "shared_kb": 0, "processes": 0}
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total["processes"] += 1
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            key, val = parts[0].rstrip(":"), parts[1]
            if key == "Rss":
                total["rss_kb"] += int(val)
            elif key == "Pss":
                total["pss_kb"] += int(val)
            elif key in ("Private_Clean", "Private_Dirty"):
                total["private_kb"] += int(val)
            elif key in ("Shared_Clean", "Shared_Dirty"):
                total["shared_kb"] += int(val)
    return total


def machine_cpu() -> tuple[float, float, float]:
    """(busy, idle, steal) seconds of all CPUs since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    return ((user + nice + system + irq + softirq) / CLK_TCK, (idle + iowait) / CLK_TCK, steal / CLK_TCK)


def wait_for_low_load(max_load: float, max_wait: float) -> dict:
    """Wait (at most `max_wait` s) until the 1-minute load average is at most `max_load`."""
    t0 = time.monotonic()
    waited = False
    while loadavg()[0] > max_load and time.monotonic() - t0 < max_wait:
        if not waited:
            print(f"waiting for the 1-min load average to drop to {max_load} (now {loadavg()[0]}, "
                  f"at most {max_wait:.0f} s)", flush=True)
            waited = True
        time.sleep(5)
    return {"max_load": max_load, "waited_s": round(time.monotonic() - t0, 1), "loadavg": loadavg()}


class CpuMeter:
    """utime+stime deltas of a set of process trees (and of this process) over a window, plus the
    machine's busy time, so that CPU used by anything else (other test suites) shows up as `other_cpu_s`."""

    def __init__(self, trees: dict[str, int], roles: dict[int, str] | None = None) -> None:
        self.trees = trees  # name -> root pid
        self.roles = roles or {}  # pid -> role (from kamcmd core.psx), for a breakdown of the first tree
        self._start: dict[str, dict[int, float]] = {}
        self._self0 = 0.0
        self._t0 = 0.0

    def _self(self) -> float:
        t = os.times()
        return t.user + t.system

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._self0 = self._self()
        self._start = {name: cpu_seconds(children_of(pid)) for name, pid in self.trees.items()}
        self._machine0 = machine_cpu()

    def stop(self) -> dict:
        wall = time.monotonic() - self._t0
        out = {"wall_s": round(wall, 3), "self_cpu_s": round(self._self() - self._self0, 3)}
        for name, pid in self.trees.items():
            now = cpu_seconds(children_of(pid))
            before = self._start.get(name, {})
            # Processes that appeared during the window count from 0.
            out[f"{name}_cpu_s"] = round(sum(v - before.get(p, 0.0) for p, v in now.items()), 3)
            if self.roles and name == next(iter(self.trees)):
                by_role: dict[str, float] = {}
                for p, v in now.items():
                    role = self.roles.get(p, "other")
                    by_role[role] = by_role.get(role, 0.0) + v - before.get(p, 0.0)
                out[f"{name}_by_role_s"] = {k: round(v, 3) for k, v in sorted(by_role.items()) if v > 0}
        busy, idle, steal = (b - a for a, b in zip(self._machine0, machine_cpu()))
        ours = out["self_cpu_s"] + sum(out[f"{n}_cpu_s"] for n in self.trees)
        out["machine_busy_s"] = round(busy, 3)
        out["machine_idle_s"] = round(idle, 3)
        out["steal_s"] = round(steal, 3)
        out["other_cpu_s"] = round(max(0.0, busy - ours), 3)
        return out


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """A process started in its own session; stop() signals its process group (its PID)."""

    cmd: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> "Proc":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     cwd=str(self.cwd) if self.cwd else None)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        pgid = self.proc.pid  # start_new_session: the group id is our child's PID
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        try:
            os.killpg(pgid, signal.SIGKILL)  # leftovers of that group only
        except ProcessLookupError:
            pass
        self._log.close()
        self.proc = None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(l for l in lines[-n:])


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def tcp_listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
            return True
        except OSError:
            return False


def wait_until(pred, timeout: float, proc: Proc, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{what} exited:\n{proc.log_tail()}")
        if pred():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready in {timeout}s:\n{proc.log_tail()}")


# Gateway limits raised for load from one host (kemi/wsgw/config.py Limits), as the test harness does.
GATEWAY_LOAD_ENV = {
    "GW_MAX_MSG_RATE": "1000000",
    "GW_MSG_BURST": "1000000",
    "GW_MAX_CALLS_PER_CONN": "100000",
    "GW_MAX_CONNS_PER_IP": "1000000",
    "GW_AUTH_FAIL_LIMIT": "1000000",
    "GW_SIP_RATE": "10000000",
}


class _KamailioProc:
    """What both Kamailio launchers share once started: `proc` and the `ctl` socket."""

    proc: "Proc | None"
    ctl: Path

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()
            self.proc = None

    def kamcmd(self, *args: str) -> str:
        return kamcmd(self.ctl, *args)


@dataclass
class GatewayProc(_KamailioProc):
    """The gateway (kamailio/run-gateway.sh of `root`) on free loopback ports, with a ctl socket for kamcmd."""

    root: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    children: int = 2
    shm_mb: int = 512
    pkg_mb: int = 16
    ws_port: int = 0
    sip_port: int = 0
    proc: Proc | None = None

    def start(self, timeout: float = 30.0) -> "GatewayProc":
        self.ws_port = self.ws_port or free_port()
        self.sip_port = self.sip_port or free_port()
        run_dir = self.workdir / f"gw-run-{self.ws_port}"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.ctl = run_dir / "ctl.sock"
        env = dict(os.environ)
        env.update({
            "GW_LISTEN_IP": "127.0.0.1",
            "GW_WS_PORT": str(self.ws_port),
            "GW_SIP_PORT": str(self.sip_port),
            "GW_RUN_DIR": str(run_dir),
            "GW_CHILDREN": str(self.children),
            "GW_SHM_MB": str(self.shm_mb),
            "GW_PKG_MB": str(self.pkg_mb),
            "GW_UPSTREAM": "",
            **GATEWAY_LOAD_ENV,
        })
        if "GW_PYTHON_SITE" not in env and self.root != REPO:
            # A snapshot tree has no .venv of its own: use the repository's.
            site = REPO / ".venv" / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
            env["GW_PYTHON_SITE"] = str(site)
        env.update(self.env)
        cmd = [str(self.root / "kamailio" / "run-gateway.sh"),
               "--loadmodule=ctl.so", f"--modparam=ctl:binrpc:s:unix:{self.ctl}"]
        self.proc = Proc(cmd, self.workdir / f"gateway-{self.ws_port}.log", env=env).start()
        wait_until(lambda: http_ok(f"http://127.0.0.1:{self.ws_port}/health"), timeout, self.proc, "gateway")
        return self



@dataclass
class PlainKamailio(_KamailioProc):
    """Plain Kamailio (bench/kamailio-plain.cfg): SIP over WebSocket proxy to `upstream` (host:port)."""

    workdir: Path
    upstream: str
    children: int = 2
    shm_mb: int = 512
    pkg_mb: int = 16
    ws_port: int = 0
    sip_port: int = 0
    rd_buf: int = 65536  # tcp_rd_buf_size, as in kamailio/kamailio.cfg
    proc: Proc | None = None

    def start(self, timeout: float = 20.0) -> "PlainKamailio":
        self.ws_port = self.ws_port or free_port()
        self.sip_port = self.sip_port or free_port()
        run_dir = self.workdir / f"plain-run-{self.ws_port}"
        run_dir.mkdir(parents=True, exist_ok=True)
        self.ctl = run_dir / "ctl.sock"
        cmd = [KAMAILIO, "-f", str(BENCH / "kamailio-plain.cfg"), "-DD", "-E",
               "-m", str(self.shm_mb), "-M", str(self.pkg_mb), "-Y", str(run_dir),
               "-P", str(run_dir / "kamailio.pid"),
               "-l", f"udp:127.0.0.1:{self.sip_port}", "-l", f"tcp:127.0.0.1:{self.ws_port}",
               "-A", f"PLAIN_CHILDREN={self.children}", "-A", f'PLAIN_UPSTREAM="sip:{self.upstream}"',
               "-A", f"PLAIN_RD_BUF={self.rd_buf}",
               "--loadmodule=ctl.so", f"--modparam=ctl:binrpc:s:unix:{self.ctl}"]
        self.proc = Proc(cmd, self.workdir / f"plain-{self.ws_port}.log").start()
        wait_until(lambda: tcp_listening(self.ws_port), timeout, self.proc, "plain kamailio")
        time.sleep(0.5)  # workers forked after the listener exists
        return self



def kamcmd(ctl: Path, *args: str) -> str:
    res = subprocess.run([KAMCMD, "-s", f"unix:{ctl}", *args], capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise RuntimeError(f"kamcmd {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


def process_roles(ctl: Path) -> dict[int, str]:
    """pid -> short role of every Kamailio process (kamcmd core.psx)."""
    import re

    roles = {}
    for pid, desc in re.findall(r"PID: (\d+)\s+DSC: ([^\n]+)", kamcmd(ctl, "core.psx")):
        d = desc.lower()
        role = ("udp_worker" if "udp receiver" in d else "tcp_worker" if "tcp receiver" in d
                else "tcp_main" if "tcp main" in d else "ws_keepalive" if "websocket keepalive" in d
                else "rtimer" if "rtimer" in d else "timers" if "timer" in d else "main" if "main process" in d
                else "other")
        roles[int(pid)] = role
    return roles


def parse_kv(text: str) -> dict[str, int]:
    """`kamcmd core.shmmem` output ("{ total: 1, free: 2, ... }") as a dict."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, _, v = line.strip().partition(":")
            v = v.strip()
            if v.isdigit():
                out[k.strip()] = int(v)
    return out


def shm_stats(ctl: Path) -> dict[str, int]:
    return parse_kv(kamcmd(ctl, "core.shmmem"))


def pkg_stats(ctl: Path) -> list[dict[str, int]]:
    """`kamcmd pkg.stats` (kex): one entry per process (pid, rank, used, free, real_used, total_size ...)."""
    entries, cur = [], {}
    for line in kamcmd(ctl, "pkg.stats").splitlines():
        line = line.strip()
        if line == "{":
            cur = {}
        elif line == "}":
            if cur:
                entries.append(cur)
            cur = {}
        elif ":" in line:
            k, _, v = line.partition(":")
            v = v.strip()
            if v.lstrip("-").isdigit():
                cur[k.strip()] = int(v)
    return entries


@dataclass
class SippUas:
    """SIPp as the UAS that answers at once (bench/sipp/uas_answer.xml), unbounded calls, no traces."""

    workdir: Path
    port: int = 0
    scenario: Path = BENCH / "sipp" / "uas_answer.xml"
    proc: Proc | None = None

    def start(self) -> "SippUas":
        self.port = self.port or free_port()
        cmd = [SIPP, "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(self.port), "-nostdin",
               "-trace_stat", "-stf", str(self.workdir / f"sipp-{self.port}-stat.csv"), "-fd", "1",
               "-trace_err", "-error_file", str(self.workdir / f"sipp-{self.port}-errors.log"),
               "-max_socket", "1000", "-timeout", "900s"]
        self.proc = Proc(cmd, self.workdir / f"sipp-{self.port}.log", cwd=self.workdir).start()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"sipp exited:\n{self.proc.log_tail()}")
            if _udp_bound(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError("sipp not listening")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict:
        """Last line of SIPp's -trace_stat CSV (cumulative counters)."""
        path = self.workdir / f"sipp-{self.port}-stat.csv"
        try:
            lines = [l for l in path.read_text().splitlines() if l.strip()]
        except OSError:
            return {}
        if len(lines) < 2:
            return {}
        head, last = lines[0].split(";"), lines[-1].split(";")
        row = dict(zip(head, last))
        keep = ("TotalCallCreated", "SuccessfulCall(C)", "FailedCall(C)", "CurrentCall", "Retransmissions(C)",
                "DeadCallMsgs(C)", "OutOfCallMsgs(C)", "FailedMaxUDPRetrans(C)", "FailedUnexpectedMessage(C)",
                "FailedCallRejected(C)", "FailedCmdNotSent(C)", "FailedRegexpDoesntMatch(C)")
        return {k: int(row[k]) for k in keep if k in row and row[k].strip().isdigit()}

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(grace=5)
            self.proc = None


def _udp_bound(port: int) -> bool:
    suffix = f":{port:04X}"
    try:
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            if line.split()[1].endswith(suffix):
                return True
    except OSError:
        pass
    return False


def make_subscribers(path: Path, n: int, first: int = 100000) -> list[tuple[str, str]]:
    """A GW_SUBSCRIBERS file with `n` DNs (first, first+1, ...); returns [(dn, password)]."""
    subs = [(str(first + i), f"pw{first + i}") for i in range(n)]
    path.write_text("# bench subscribers\n" + "".join(f"{dn}:{pw}\n" for dn, pw in subs))
    return subs


def snapshot_root(root: str | None) -> Path:
    return Path(root).resolve() if root else REPO
