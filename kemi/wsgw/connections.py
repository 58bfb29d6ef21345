"""Identity of a client WebSocket connection, usable from any worker."""

from __future__ import annotations

from dataclasses import dataclass

PROTO_NAMES = {5: "ws", 6: "wss"}


@dataclass(frozen=True)
class ConnRef:
    """A WebSocket by the client's address: what `wss_send` needs to find it."""

    proto: int  # 5 = WS, 6 = WSS (Kamailio's PROTO_WS / PROTO_WSS)
    ip: str
    port: int

    @property
    def key(self) -> str:
        # '|' because IPv6 addresses contain ':'.
        return f"{PROTO_NAMES.get(self.proto, self.proto)}|{self.ip}|{self.port}"

    @classmethod
    def from_key(cls, key: str) -> "ConnRef":
        proto, ip, port = key.split("|")
        proto_num = next((num for num, name in PROTO_NAMES.items() if name == proto), None)
        return cls(proto_num if proto_num is not None else int(proto), ip, int(port))

    def __str__(self) -> str:
        return self.key
