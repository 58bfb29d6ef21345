"""HTTP Digest authentication (RFC 2617 / RFC 7616, MD5, qop=auth) for upstream REGISTER.

Computed in Python because uac's digest path with the reply event double-frees
shared memory in Kamailio 5.6 (see ../shared/KAMAILIO-NOTES.md).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

_PARAM_RE = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]+)')


@dataclass(frozen=True)
class Challenge:
    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: str | None = None  # "auth" when offered, else None
    stale: bool = False


def parse_challenge(header_value: str) -> Challenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate Digest value."""
    value = header_value.strip()
    if not value.lower().startswith("digest"):
        raise ValueError("not a Digest challenge")
    params: dict[str, str] = {}
    for name, raw in _PARAM_RE.findall(value[6:]):
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[name.lower()] = raw
    if "nonce" not in params or "realm" not in params:
        raise ValueError("Digest challenge without realm or nonce")
    algorithm = params.get("algorithm", "MD5")
    if algorithm.upper() != "MD5":
        raise ValueError(f"unsupported digest algorithm {algorithm}")
    qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
    if qops and "auth" not in qops:
        raise ValueError(f"unsupported qop {params['qop']}")
    return Challenge(
        realm=params["realm"],
        nonce=params["nonce"],
        opaque=params.get("opaque"),
        algorithm="MD5",
        qop="auth" if qops else None,
        stale=params.get("stale", "").lower() == "true",
    )


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def authorization(
    challenge: Challenge,
    *,
    method: str,
    uri: str,
    username: str,
    password: str,
    nc: int = 1,
    cnonce: str | None = None,
) -> str:
    """The Authorization / Proxy-Authorization header value answering `challenge`."""
    ha1 = _md5(f"{username}:{challenge.realm}:{password}")
    ha2 = _md5(f"{method}:{uri}")
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
    ]
    if challenge.qop:
        cnonce = cnonce or secrets.token_hex(8)
        nc_hex = f"{nc:08x}"
        response = _md5(f"{ha1}:{challenge.nonce}:{nc_hex}:{cnonce}:auth:{ha2}")
        parts += [f"response={_quote(response)}", "algorithm=MD5", f"cnonce={_quote(cnonce)}", "qop=auth", f"nc={nc_hex}"]
    else:
        response = _md5(f"{ha1}:{challenge.nonce}:{ha2}")
        parts += [f"response={_quote(response)}", "algorithm=MD5"]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    return "Digest " + ", ".join(parts)
