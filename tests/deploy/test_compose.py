"""The container deployment (docker-compose.yml, deploy/) and the systemd unit.

No Docker daemon is needed: `docker compose config` (Compose v2) or `docker-compose
config` (Debian 12's v1.29, installed by `make test`) validates and resolves the compose
file offline. The tests then check what the resolved file says: pinned images, bind
mounts that exist in the repo, the kamailio service's GW_* variables against
kamailio/run-gateway.sh, and the wiring between the services. The entrypoint scripts in
deploy/ run here for real where they can (openssl, a fake rtpengine/turnserver).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
RUN_GATEWAY = ROOT / "kamailio" / "run-gateway.sh"
UNIT = ROOT / "deploy" / "systemd" / "kamailio-wsgw.service"
UNIT_ENV = ROOT / "deploy" / "systemd" / "kamailio-wsgw.env"
SERVICES = {"kamailio", "rtpengine", "nginx", "coturn", "asterisk"}
TIMEOUT = 60


# ---- running compose ----


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 timeout=TIMEOUT).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    pytest.fail("neither `docker compose` nor `docker-compose` is installed "
                "(make test installs Debian's docker-compose)")


def _yaml_to_data(text: str, compose: list[str]) -> dict:
    try:
        import yaml
    except ImportError:
        # docker-compose v1 is a Python program with PyYAML; let its interpreter parse.
        interpreter = Path(compose[0]).read_text(errors="replace").splitlines()[0][2:].strip()
        out = subprocess.run(
            [*interpreter.split(), "-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"],
            input=text, capture_output=True, text=True, timeout=TIMEOUT, check=True,
        )
        return json.loads(out.stdout)
    return yaml.safe_load(text)


def compose_config(tmp_path: Path, settings: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """`compose config` of the repo's file with only `settings` as .env (never a developer's .env)."""
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in (settings or {}).items()))
    compose = _compose_command()
    json_out = compose[-1] == "compose"  # v2 prints JSON on request; v1 only YAML
    cmd = [*compose, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config"]
    if json_out:
        cmd += ["--format", "json"]
    # A clean environment: WSGW_* set in the caller's shell must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WSGW_", "COMPOSE_"))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stderr}"
    data = json.loads(proc.stdout) if json_out else _yaml_to_data(proc.stdout, compose)
    return proc, data


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict:
    proc, data = compose_config(tmp_path_factory.mktemp("compose"))
    # Every ${VAR} has a default: a stack without .env must not run with blanks.
    assert "is not set" not in proc.stderr, proc.stderr
    return data


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(service: dict) -> list[dict]:
    """Volumes in one shape: {type, source, target, read_only} (v1 prints short syntax)."""
    out = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            out.append({"type": volume.get("type"), "source": volume.get("source", ""),
                        "target": volume["target"], "read_only": bool(volume.get("read_only"))})
            continue
        parts = volume.split(":")
        source, target = parts[0], parts[1]
        out.append({"type": "bind" if source.startswith(("/", ".")) else "volume", "source": source,
                    "target": target, "read_only": len(parts) > 2 and "ro" in parts[2].split(",")})
    return out


def known_gw_variables() -> set[str]:
    """GW_* names the gateway reads: run-gateway.sh and the KEMI Python."""
    text = RUN_GATEWAY.read_text() + "".join(p.read_text() for p in (ROOT / "kemi").rglob("*.py"))
    return set(re.findall(r"\bGW_[A-Z0-9_]*[A-Z0-9]\b", text))


def run_gateway_variables() -> set[str]:
    return set(re.findall(r"\$\{?(GW_[A-Z0-9_]+)", RUN_GATEWAY.read_text()))


# ---- the compose file ----


def test_compose_config_validates(resolved: dict) -> None:
    assert set(resolved["services"]) == SERVICES


def _check_image_reference(ref: str, where: str) -> None:
    assert "@sha256:" in ref or ":" in ref.rsplit("/", 1)[-1], f"{where}: {ref!r} has no tag"
    tag = ref.rsplit("/", 1)[-1].split("@")[0].partition(":")[2]
    assert tag and tag != "latest", f"{where}: {ref!r} must name an explicit tag, not latest"
    assert "$" not in ref, f"{where}: {ref!r} depends on a variable"


def test_every_image_is_pinned_to_a_tag(resolved: dict) -> None:
    for name, service in resolved["services"].items():
        if "image" in service:
            _check_image_reference(service["image"], f"service {name}")
        build = service.get("build")
        if build is None:
            continue
        context = Path(build if isinstance(build, str) else build["context"])
        dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        stages: set[str] = set()
        froms = re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", dockerfile.read_text(),
                           re.IGNORECASE | re.MULTILINE)
        assert froms, f"{dockerfile}: no FROM"
        for ref, stage in froms:
            if ref not in stages:
                _check_image_reference(ref, str(dockerfile.relative_to(ROOT)))
            if stage:
                stages.add(stage)


def test_bind_mounts_exist_in_the_repo(resolved: dict) -> None:
    binds = 0
    for name, service in resolved["services"].items():
        for mount in mounts(service):
            if mount["type"] != "bind":
                continue
            binds += 1
            source = Path(mount["source"])
            assert source.is_relative_to(ROOT), f"{name}: bind mount {source} is outside the repo"
            assert source.exists(), f"{name}: bind mount source {source} does not exist"
            if source.is_dir():
                assert any(source.iterdir()), f"{name}: {source} is empty"
            # Configuration is never written back by a container.
            assert mount["read_only"], f"{name}: {source} -> {mount['target']} should be :ro"
    assert binds >= 6


def test_build_contexts_hold_what_the_dockerfiles_copy(resolved: dict) -> None:
    for name, service in resolved["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = Path(build["context"] if isinstance(build, dict) else build)
        dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
        for line in re.findall(r"^COPY\s+(?!--from)(.+)$", dockerfile.read_text(), re.MULTILINE):
            sources = [word for word in line.split()[:-1] if not word.startswith("--")]
            for source in sources:
                assert (context / source).exists(), f"{name}: COPY {source} is not in {context}"


def test_kamailio_gets_every_variable_run_gateway_reads(resolved: dict) -> None:
    env = env_of(resolved["services"]["kamailio"])
    wanted = run_gateway_variables()
    assert {"GW_LISTEN_IP", "GW_WS_PORT", "GW_UPSTREAM", "GW_RUN_DIR"} <= wanted  # the regex still works
    assert sorted(wanted - set(env)) == []
    # ... and nothing the gateway does not know (a typo would be silently ignored).
    assert sorted(k for k in env if k.startswith("GW_") and k not in known_gw_variables()) == []


def test_services_are_wired_together(resolved: dict) -> None:
    services = resolved["services"]
    gw = env_of(services["kamailio"])
    # Media through the rtpengine service, at the control address it listens on.
    assert gw["GW_MEDIA"] == "rtpengine"
    assert gw["GW_RTPENGINE"] == "udp:" + env_of(services["rtpengine"])["RTPENGINE_NG"]
    # The upstream is the sample Asterisk's transport.
    bind = re.search(r"^\[transport-udp\][^\[]*?^bind=(\S+)", (ROOT / "deploy/asterisk/pjsip.conf").read_text(),
                     re.MULTILINE | re.DOTALL)
    assert bind and gw["GW_UPSTREAM"] == f"sip:{bind.group(1)}"
    # nginx forwards to Kamailio's HTTP/WebSocket listener; Kamailio itself has no TLS.
    assert env_of(services["nginx"])["WSGW_BACKEND"] == f"{gw['GW_LISTEN_IP']}:{gw['GW_WS_PORT']}"
    assert gw["GW_WSS_PORT"] == ""
    # Addresses inside SIP/SDP must be the host's: no Docker NAT in between.
    for name, service in services.items():
        assert service.get("network_mode") == "host", name


def test_settings_point_the_stack_at_a_real_pbx(tmp_path: Path) -> None:
    _, data = compose_config(tmp_path, {"WSGW_UPSTREAM": "sip:pbx.example.com:5060",
                                        "WSGW_LISTEN_IP": "192.0.2.10", "WSGW_RTP_IP": "192.0.2.10"})
    services = data["services"]
    assert env_of(services["kamailio"])["GW_UPSTREAM"] == "sip:pbx.example.com:5060"
    assert env_of(services["kamailio"])["GW_LISTEN_IP"] == "192.0.2.10"
    assert env_of(services["nginx"])["WSGW_BACKEND"] == "192.0.2.10:8080"
    assert env_of(services["rtpengine"])["RTPENGINE_INTERFACE"] == "192.0.2.10"


# ---- nginx ----


def _nginx_template(resolved: dict) -> str:
    [templates] = [m for m in mounts(resolved["services"]["nginx"]) if m["target"] == "/etc/nginx/templates"]
    files = sorted(Path(templates["source"]).glob("*.template"))
    assert files
    return "\n".join(f.read_text() for f in files)


def _block(text: str, header: str) -> str:
    """The body of the first `header { ... }` block (braces balanced)."""
    start = text.index(header)
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    raise AssertionError(f"unbalanced block {header}")


def test_nginx_proxies_the_websocket_upgrade(resolved: dict) -> None:
    conf = re.sub(r"#.*", "", _nginx_template(resolved))
    # The page connects to wss://<host>/ (client/index-custom.html): "/" with Upgrade goes to Kamailio.
    root = _block(conf, "location = /")
    assert re.search(r'if\s*\(\$http_upgrade\s*~\*\s*"\^websocket\$"\)\s*\{\s*return 418;', root)
    assert re.search(r"error_page\s+418\s*=\s*@wsgw;", root)
    ws = _block(conf, "location @wsgw")
    assert re.search(r"proxy_pass\s+http://\$\{WSGW_BACKEND\};", ws)
    assert re.search(r"proxy_http_version\s+1\.1;", ws)
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", ws)
    assert re.search(r'proxy_set_header\s+Connection\s+"upgrade";', ws)
    # Idle agents must not be cut off after nginx's default 60 s.
    timeout = re.search(r"proxy_read_timeout\s+(\d+)([smh]?);", ws)
    assert timeout and int(timeout.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[timeout.group(2)] >= 600
    # TLS, with the certificate from the volume the entrypoint fills.
    assert re.search(r"listen\s+\$\{WSGW_HTTPS_PORT\}\s+ssl", conf)
    [certs] = [m for m in mounts(resolved["services"]["nginx"]) if m["type"] == "volume"]
    assert re.search(rf"ssl_certificate\s+{re.escape(certs['target'])}/wsgw\.crt;", conf)


def test_nginx_template_only_uses_variables_compose_sets(resolved: dict) -> None:
    env = env_of(resolved["services"]["nginx"])
    used = set(re.findall(r"\$\{(\w+)\}", _nginx_template(resolved)))
    assert used and used <= set(env)
    assert all(re.match(env["NGINX_ENVSUBST_FILTER"], name) for name in used)


def _run_cert_entrypoint(cert_dir: Path, name: str = "agents.example.test") -> subprocess.CompletedProcess:
    env = {**os.environ, "WSGW_CERT_DIR": str(cert_dir), "WSGW_SERVER_NAME": name}
    return subprocess.run(["sh", str(ROOT / "deploy/nginx/entrypoint.sh"), "true"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_nginx_entrypoint_makes_a_self_signed_certificate_once(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    first = _run_cert_entrypoint(certs)
    assert first.returncode == 0, first.stderr
    crt, key = certs / "wsgw.crt", certs / "wsgw.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", "-text"], capture_output=True,
                          text=True, timeout=TIMEOUT, check=True).stdout
    assert "DNS:agents.example.test" in text and "IP Address:127.0.0.1" in text
    before = crt.read_bytes(), key.read_bytes()
    again = _run_cert_entrypoint(certs)
    assert again.returncode == 0 and (crt.read_bytes(), key.read_bytes()) == before  # kept, not remade
    key.unlink()  # half a pair: refuse rather than overwrite what may be a real certificate
    half = _run_cert_entrypoint(certs)
    assert half.returncode == 2 and crt.read_bytes() == before[0]


def test_nginx_entrypoint_names_an_ip_address_as_such(tmp_path: Path) -> None:
    assert _run_cert_entrypoint(tmp_path, "192.0.2.10").returncode == 0
    text = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "wsgw.crt"), "-noout", "-text"],
                          capture_output=True, text=True, timeout=TIMEOUT, check=True).stdout
    assert "IP Address:192.0.2.10" in text


# ---- rtpengine and coturn entrypoints ----


def _fake(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_rtpengine_entrypoint_writes_a_userspace_config(tmp_path: Path, resolved: dict) -> None:
    fake = _fake(tmp_path, "rtpengine", 'cat "${1#--config-file=}"\n')  # prints the config it was given
    env = {**os.environ, **env_of(resolved["services"]["rtpengine"]), "TMPDIR": str(tmp_path),
           "RTPENGINE_BIN": str(fake), "RTPENGINE_INTERFACE": "10.0.0.5!203.0.113.10"}
    out = subprocess.run(["sh", str(ROOT / "deploy/rtpengine/entrypoint.sh")], env=env, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    conf = dict(line.split(" = ", 1) for line in out.stdout.splitlines() if " = " in line)
    assert conf["table"] == "-1"  # no kernel module in a container
    assert conf["interface"] == "10.0.0.5!203.0.113.10"
    assert conf["listen-ng"] == env["RTPENGINE_NG"]
    assert (conf["port-min"], conf["port-max"]) == (env["RTPENGINE_PORT_MIN"], env["RTPENGINE_PORT_MAX"])
    assert conf["foreground"] == "true"


def test_rtpengine_entrypoint_guesses_the_media_address(tmp_path: Path) -> None:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 not installed")
    route = subprocess.run(["ip", "-4", "route", "get", "192.0.2.1"], capture_output=True, text=True,
                           timeout=TIMEOUT)
    src = re.search(r"\bsrc (\S+)", route.stdout)
    fake = _fake(tmp_path, "rtpengine", 'cat "${1#--config-file=}"\n')
    env = {**os.environ, "TMPDIR": str(tmp_path), "RTPENGINE_BIN": str(fake), "RTPENGINE_INTERFACE": ""}
    out = subprocess.run(["sh", str(ROOT / "deploy/rtpengine/entrypoint.sh")], env=env, capture_output=True,
                         text=True, timeout=TIMEOUT)
    if src is None:  # no default route here: it must refuse, not advertise nothing
        assert out.returncode == 2 and "WSGW_RTP_IP" in out.stderr
    else:
        assert out.returncode == 0, out.stderr
        assert f"interface = {src.group(1)}\n" in out.stdout


@pytest.mark.parametrize("password, expected", [("", "--stun-only"), ("s3cret", "--user=agent:s3cret")])
def test_coturn_relays_only_with_a_password_from_the_environment(tmp_path: Path, password: str,
                                                                   expected: str) -> None:
    fake = _fake(tmp_path, "turnserver", 'echo "$@"\n')
    env = {**os.environ, "TURNSERVER_BIN": str(fake), "WSGW_TURN_USER": "agent", "WSGW_TURN_PASSWORD": password}
    out = subprocess.run(["sh", str(ROOT / "deploy/coturn/entrypoint.sh")], env=env, capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout.split() and "-c" in out.stdout.split()
    conf = (ROOT / "deploy/coturn/turnserver.conf").read_text()
    assert not re.search(r"^\s*(user|static-auth-secret)\s*=", conf, re.MULTILINE)  # no credential in the repo
    assert not re.search(r"^\s*allow-loopback-peers", conf, re.MULTILINE)
    assert "denied-peer-ip=127.0.0.0-127.255.255.255" in conf


# ---- systemd ----


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None and "=" in line, f"not a unit line: {raw!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (test_systemd_unit_keys still checks the unit)")
    # verify wants ExecStart to exist: point the unit at this checkout instead of /opt.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/kamailio-wsgw", str(ROOT)))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=TIMEOUT)
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if UNIT.name in line]
    assert out.returncode == 0 and complaints == [], out.stdout + out.stderr


def test_systemd_unit_keys() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = dict(unit["Service"])
    assert service["ExecStart"] == "/opt/kamailio-wsgw/kamailio/run-gateway.sh"
    assert service["Type"] == "simple"  # run-gateway.sh execs Kamailio in the foreground
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root") and service["Group"] not in ("", "root")
    assert service["EnvironmentFile"] == "/etc/default/kamailio-wsgw"
    # With the file system read-only, the run dir must be the runtime directory systemd makes.
    assert service["ProtectSystem"] == "strict"
    env = dict(v.split("=", 1) for k, v in unit["Service"] if k == "Environment")
    assert env["GW_RUN_DIR"] == "/run/" + service["RuntimeDirectory"]
    assert service["NoNewPrivileges"] == "yes"
    # ctypes (kemi/wsgw/ws_send.py) needs a libffi closure: no W^X enforcement.
    assert service.get("MemoryDenyWriteExecute", "no") == "no"
    assert dict(unit["Install"])["WantedBy"] == "multi-user.target"


def test_systemd_environment_sample() -> None:
    active, commented = [], []
    for raw in UNIT_ENV.read_text().splitlines():
        line = raw.strip()
        if not line:
            continue
        # Commented settings document real variables too.
        setting = re.match(r"(#?)\s*(GW_[A-Z0-9_]+)=", line)
        if line.startswith("#") and not setting:
            continue
        assert setting, f"systemd EnvironmentFile wants KEY=value: {raw!r}"
        (commented if setting.group(1) else active).append(setting.group(2))
    assert sorted(set(active + commented) - known_gw_variables()) == []
    assert {"GW_LISTEN_IP", "GW_UPSTREAM", "GW_MEDIA"} <= set(active)
    assert "GW_RUN_DIR" not in active  # the unit's /run/kamailio-wsgw must stay in force
