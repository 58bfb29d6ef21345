"""Run the SIPp scenarios of ``sipp-scenarios/`` as subprocesses, for tests.

Typical use (a UAS scenario playing the upstream SIP side)::

    port = free_udp_port()
    with Sipp("uas_answer_wait_bye.xml", tmp_path, local_port=port) as uas:
        ...  # point the gateway at 127.0.0.1:<port>, drive the WebRTC side
        assert uas.wait(20) == 0, uas.describe()
    assert "BYE sip:" in uas.messages()

A UAC scenario calling into the gateway::

    uac = Sipp("uac_call_remote_bye.xml", tmp_path, local_port=free_udp_port(),
               remote=f"127.0.0.1:{gw_port}", service="1001")
    uac.start()
    assert uac.wait() == 0, uac.describe()

SIPp runs in the foreground (no ``-bg``); ``-timeout <timeout>s -timeout_error``
make it end by itself (non-zero) if the scenario is not done in time, and
``wait()`` kills it by PID if it still overruns (then it returns ``KILLED``:
SIPp itself exits 0 on SIGTERM when no call has failed yet). ``stop()``
(also run by ``__exit__``) kills a still-running SIPp; ``messages()`` stays
readable afterwards. Every key of ``DEFAULT_KEYS`` is always passed with
``-key`` (SIPp aborts on a ``[key]`` it does not know), overridden by
``keys``. Logs go to ``workdir/<scenario>_<port>_{messages,errors,
calldebug,stdout,stderr}.log``. See sipp-scenarios/README.md.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Self

from .ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS_DIR = REPO_ROOT / "sipp-scenarios"
SIPP_BIN = os.environ.get("SIPP_BIN", "sipp")
KILLED = -signal.SIGTERM  # wait()/returncode when the runner had to kill SIPp

# Passed to every scenario; scenarios ignore keys they do not use.
DEFAULT_KEYS: dict[str, str] = {
    "expires": "60",  # registrar_challenge: granted registration time
    "auth_user": "",  # registrar_challenge: expected digest username ("" = any)
    "auth_pass": "",  # registrar_challenge: verify digest response ("" = don't)
    "hold_ms": "25000",  # uas_silent: how long to stay silent after the INVITE
    "caller": "sipp",  # uac_*: user part of From
    "refer_target": "5002",  # uac_call_send_refer: user part of the Refer-To URI
}


def free_udp_port() -> int:
    """A port currently free on 127.0.0.1 for both UDP and TCP."""
    return free_port()


def _udp_port_bound_by(pid: int, port: int) -> bool:
    """True if process `pid` holds a UDP socket bound to `port` (any address)."""
    try:
        inodes = {
            os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
            for fd in os.listdir(f"/proc/{pid}/fd")
        }
    except OSError:
        return False
    suffix = f":{port:04X}"
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[1].endswith(suffix) and fields[9] in inodes:
                return True
    return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(missing)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


class Sipp:
    """One SIPp process playing one scenario file."""

    def __init__(
        self,
        scenario: str,
        workdir: Path,
        *,
        local_port: int,
        remote: str | None = None,
        calls: int = 1,
        rate: float | None = None,
        keys: dict[str, str] | None = None,
        service: str | None = None,
        extra_args: list[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        path = Path(scenario)
        self.scenario = path if path.is_absolute() else SCENARIOS_DIR / path
        if not self.scenario.is_file():
            raise FileNotFoundError(self.scenario)
        self.workdir = Path(workdir)
        self.local_port = local_port
        self.remote = remote
        self.calls = calls
        self.rate = rate
        self.keys = {**DEFAULT_KEYS, **(keys or {})}
        self.service = service
        self.extra_args = list(extra_args or [])
        self.timeout = timeout
        self.name = f"{self.scenario.stem}_{local_port}"
        self.stdout_path = self.workdir / f"{self.name}_stdout.log"
        self.stderr_path = self.workdir / f"{self.name}_stderr.log"
        self.message_path = self.workdir / f"{self.name}_messages.log"
        self.error_path = self.workdir / f"{self.name}_errors.log"
        self.calldebug_path = self.workdir / f"{self.name}_calldebug.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.killed = False

    # -- command line ---------------------------------------------------
    def command(self) -> list[str]:
        cmd = [
            SIPP_BIN,
            "-sf", str(self.scenario),
            "-i", "127.0.0.1",
            "-p", str(self.local_port),
            "-m", str(self.calls),
            "-nostdin",
            "-timeout", f"{max(1, math.ceil(self.timeout))}s",
            "-timeout_error",
            "-trace_msg", "-message_file", str(self.message_path),
            "-trace_err", "-error_file", str(self.error_path),
            "-trace_calldebug", "-calldebug_file", str(self.calldebug_path),
        ]
        if self.rate is not None:
            cmd += ["-r", f"{self.rate:g}"]
        if self.service is not None:
            cmd += ["-s", self.service]
        for name, value in self.keys.items():
            cmd += ["-key", name, value]
        cmd += self.extra_args
        if self.remote:
            cmd.append(self.remote)
        return cmd

    # -- lifecycle ------------------------------------------------------
    def start(self) -> Self:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                cwd=self.workdir,
            )
        return self

    def wait_ready(self, timeout: float = 5.0) -> Self:
        """Return once SIPp listens on its UDP port; raise if it died or is slow."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise RuntimeError(f"sipp exited before being ready\n{self.describe()}")
            if _udp_port_bound_by(self.proc.pid, self.local_port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"sipp not listening on UDP {self.local_port} after {timeout}s\n"
                           f"{self.describe()}")

    def wait(self, timeout: float | None = None) -> int:
        """SIPp's exit code: 0 = every call succeeded; 1 = a call failed;
        255 = global -timeout hit / fatal error / <error> action; 254 = bind
        error; KILLED (-15) = it overran `timeout` (default: the -timeout given
        to SIPp + 5 s) or was stop()ped, and was killed by the runner."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} not started")
        limit = self.timeout + 5.0 if timeout is None else timeout
        try:
            rc = self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.stop()
            rc = KILLED
        # SIPp exits 0 on SIGTERM if no call failed yet: never report that
        self.returncode = KILLED if self.killed else rc
        return self.returncode

    def stop(self) -> None:
        """Kill SIPp by PID if still running (SIGTERM, then SIGKILL). Idempotent.
        Sets `killed`; logs are flushed by SIPp on SIGTERM."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.killed = True
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=3)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(timeout=5)
        if self.returncode is None:
            self.returncode = KILLED if self.killed else rc

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- results --------------------------------------------------------
    def messages(self) -> str:
        """SIP messages SIPp sent and received so far (its -trace_msg log)."""
        try:
            return self.message_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        if self.proc is None:
            code = "not started"
        elif self.proc.poll() is None:
            code = "still running"
        else:
            code = f"{self.proc.returncode}" + (" (killed by the runner)" if self.killed else "")
        return "\n".join([
            f"sipp {self.scenario.name} port {self.local_port}: exit code {code}",
            "command: " + shlex.join(self.command()),
            f"--- stderr ({self.stderr_path.name}) ---", _tail(self.stderr_path, 20),
            f"--- errors ({self.error_path.name}) ---", _tail(self.error_path, 30),
            f"--- stdout ({self.stdout_path.name}) ---", _tail(self.stdout_path, 25),
            f"--- messages ({self.message_path.name}) ---", _tail(self.message_path, 60),
        ])

    # -- context manager ------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
