"""WebRTC-to-SIP signaling gateway: the Python run by Kamailio's app_python3.

Everything here is plain Python and imports no `KSR`, except `ksr_adapter`
(the one module that talks to Kamailio) and `ws_send` (ctypes into the
kamailio binary).
"""

VERSION = "0.2.0"
PROTOCOL_VERSION = 1
SERVER_NAME = f"kamailio-wsgw/{VERSION}"
