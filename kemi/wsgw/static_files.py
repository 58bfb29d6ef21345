"""The browser client served on the gateway's HTTP port (GET / gives the agent page).

Only the files named here are served (no path from the request reaches the
file system). They are read on each request: small, and edits show up at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLIENT_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "client")

# URL path -> (file under client/, content type)
FILES = {
    "/": ("index-custom.html", "text/html; charset=utf-8"),
    "/index-custom.html": ("index-custom.html", "text/html; charset=utf-8"),
    "/webrtc-custom.js": ("webrtc-custom.js", "text/javascript; charset=utf-8"),
    "/webrtc-custom.min.js": ("dist/webrtc-custom.min.js", "text/javascript; charset=utf-8"),
    "/webrtc-custom.d.ts": ("webrtc-custom.d.ts", "text/plain; charset=utf-8"),
}


@dataclass(frozen=True)
class StaticFile:
    text: str
    content_type: str


def lookup(path: str, client_dir: str = CLIENT_DIR) -> StaticFile | None:
    entry = FILES.get(path)
    if entry is None:
        return None
    name, content_type = entry
    try:
        with open(os.path.join(client_dir, name), encoding="utf-8") as f:
            return StaticFile(f.read(), content_type)
    except OSError:
        return None
