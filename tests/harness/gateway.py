"""Start the real gateway (Kamailio + the project's cfg and KEMI) on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .ports import free_port

ROOT = Path(__file__).resolve().parents[2]
RUN_SCRIPT = ROOT / "kamailio" / "run-gateway.sh"
SUBSCRIBERS = ROOT / "etc" / "subscribers.txt"
# The demo subscribers of etc/subscribers.txt.
PASSWORDS = {f"50{n:02d}": f"agent50{n:02d}" for n in range(1, 11)}


def embedded_env(echo_port: int, **extra: str) -> dict[str, str]:
    """A gateway in embedded mode whose echo extension 9196 goes to a SIPp UAS on `echo_port`:
    the simplest way for a test to reach the SIP side. `extra`: more GW_* variables."""
    return {"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS), "GW_ECHO_URI": f"sip:127.0.0.1:{echo_port}", **extra}


@dataclass
class Gateway:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    ws_port: int = 0
    sip_port: int = 0
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.ws_port = self.ws_port or free_port()
        self.sip_port = self.sip_port or free_port()
        self.log_path = self.workdir / f"kamailio-{self.ws_port}.log"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ws_port}"

    @property
    def sip_hostport(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def start(self, timeout: float = 20.0) -> "Gateway":
        env = dict(os.environ)
        env.update(
            {
                "GW_LISTEN_IP": "127.0.0.1",
                "GW_WS_PORT": str(self.ws_port),
                "GW_SIP_PORT": str(self.sip_port),
                "GW_RUN_DIR": str(self.workdir / f"run-{self.ws_port}"),
                "GW_CHILDREN": "2",
                "GW_SHM_MB": "256",
                # Tests share 127.0.0.1 and send fast: abuse limits only where a test sets them.
                "GW_MAX_MSG_RATE": "10000",
                "GW_MSG_BURST": "10000",
                "GW_AUTH_FAIL_LIMIT": "10000",
                "GW_MAX_CONNS_PER_IP": "10000",
                "GW_SIP_RATE": "100000",
                # Most tests expect a closed client's calls to end at once; test_resume sets a grace.
                "GW_RESUME_GRACE": "0",
            }
        )
        env.update(self.env)
        self._log = open(self.log_path, "wb")
        # A new session so that stop() can signal exactly the processes started here.
        self.proc = subprocess.Popen(
            [str(RUN_SCRIPT)], env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self._healthy():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"kamailio did not come up in {timeout}s:\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + "/health", timeout=1) as resp:
                return resp.status == 200
        except (OSError, ValueError):
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # Children of the main process share its process group; make sure none is left.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._log.close()
        self.proc = None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        kept = [line for line in self.log_text().splitlines() if "DEBUG" not in line]
        return "\n".join(kept[-lines:])

    def wait_log(self, needle: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return True
            time.sleep(0.05)
        return False

    def sip_udp_send(self, data: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(data, ("127.0.0.1", self.sip_port))


def health(gw: Gateway) -> dict:
    """GET /health of a running gateway (counts of connections, registrations, calls)."""
    import json

    with urllib.request.urlopen(gw.http_url + "/health", timeout=5) as resp:
        return json.loads(resp.read())


def wait_no_calls(gw: Gateway, timeout: float = 10.0) -> dict:
    """Wait until the gateway's call table is empty; return the last health document."""
    deadline = time.monotonic() + timeout
    doc = health(gw)
    while doc["calls"] and time.monotonic() < deadline:
        time.sleep(0.1)
        doc = health(gw)
    return doc
