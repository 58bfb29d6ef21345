"""The embedded registrar's subscriber file: one `dn:password` per line."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .sip_headers import validate_dn


@dataclass(frozen=True)
class Subscribers:
    passwords: dict[str, str]

    def exists(self, dn: str) -> bool:
        return dn in self.passwords

    def check(self, dn: str, password: str) -> bool:
        expected = self.passwords.get(dn)
        if expected is None:
            # Compare anyway so an unknown DN costs the same time as a wrong password.
            hmac.compare_digest(password.encode(), password.encode())
            return False
        return hmac.compare_digest(expected.encode(), password.encode())


def parse_subscribers(text: str) -> Subscribers:
    """Parse the file; `#` comments and blank lines are ignored, bad lines raise ValueError."""
    passwords: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        dn, sep, password = line.partition(":")
        if not sep or not password:
            raise ValueError(f"subscribers line {lineno}: expected dn:password")
        try:
            validate_dn(dn.strip())
        except Exception:
            raise ValueError(f"subscribers line {lineno}: invalid DN {dn.strip()!r}") from None
        passwords[dn.strip()] = password
    return Subscribers(passwords)


def load_subscribers(path: str) -> Subscribers:
    with open(path, encoding="utf-8") as f:
        return parse_subscribers(f.read())
