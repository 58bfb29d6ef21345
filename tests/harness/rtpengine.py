"""Start Debian's rtpengine in userspace (no kernel table) on loopback for a test run."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path

from .gateway import ROOT
from .ports import free_port

sys.path.insert(0, str(ROOT / "kemi"))
from wsgw.rtpengine_ng import NgClient, RtpEngineError  # noqa: E402

RTPENGINE = "/usr/bin/rtpengine"


class RtpEngine:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ng_port = free_port()
        # Media ports below the ephemeral range (32768+), a random slice per instance.
        base = random.randrange(20000, 31000, 200)
        self.port_min, self.port_max = base, base + 199
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"udp:127.0.0.1:{self.ng_port}"

    def start(self, timeout: float = 10.0) -> "RtpEngine":
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"rtpengine-{self.ng_port}.conf"
        # Our own config file: Debian's /etc/rtpengine/rtpengine.conf expects a kernel table.
        conf.write_text(
            "[rtpengine]\ntable = -1\ninterface = 127.0.0.1\n"
            f"listen-ng = 127.0.0.1:{self.ng_port}\nport-min = {self.port_min}\nport-max = {self.port_max}\n"
            "foreground = true\nlog-stderr = true\nlog-level = 6\n"
        )
        self.log_path = self.workdir / f"rtpengine-{self.ng_port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([RTPENGINE, f"--config-file={conf}"], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        ng = NgClient(self.address, timeout=0.3)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rtpengine exited: {self.log_path.read_text()[-2000:]}")
            try:
                if ng.command("ping").get("result") == "pong":
                    return self
            except RtpEngineError:
                pass
        self.stop()
        raise RuntimeError("rtpengine did not answer ping")

    def calls(self) -> list:
        """The calls rtpengine holds now (ng `list`)."""
        return list(NgClient(self.address).command("list").get("calls", []))

    def wait_no_calls(self, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        calls = self.calls()
        while calls and time.monotonic() < deadline:
            time.sleep(0.1)
            calls = self.calls()
        return calls

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc is not None:
            self._log.close()
        self.proc = None
