"""KEMI entry loaded by app_python3 (kamailio/kamailio.cfg).

Kamailio calls the methods of the `kamailio` class; each one is a single step
that hands over to wsgw.ksr_adapter.Gateway. Exceptions are caught and logged
here so a bug in one message never breaks the worker's interpreter.
"""

import os
import sys
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
# Third-party packages (ujson, sdp-transform) come from the project's venv, built
# from the same system Python that Kamailio embeds (see Makefile).
_SITE = os.environ.get(
    "GW_PYTHON_SITE",
    os.path.join(os.path.dirname(_HERE), ".venv", "lib", "python%d.%d" % sys.version_info[:2], "site-packages"),
)
if os.path.isdir(_SITE):
    sys.path.insert(1, _SITE)

import KSR  # noqa: E402

from wsgw.ksr_adapter import Gateway  # noqa: E402


def mod_init():
    return kamailio()


def _guard(fn, *args):
    try:
        result = fn(*args)
    except Exception:
        KSR.err("wsgw: unhandled exception: " + traceback.format_exc().replace("\n", " | ") + "\n")
        return 1
    return 1 if result is None else result


class kamailio:
    def __init__(self):
        self.gw = None

    def child_init(self, rank):
        # One Gateway per worker process: it holds no shared state itself.
        self.gw = Gateway()
        return 0

    def ksr_received(self, msg):
        return _guard(self.gw.on_received)

    def ksr_request_route(self, msg):
        return _guard(self.gw.on_sip_request)

    def ksr_reply_route(self, msg):
        return _guard(self.gw.on_sip_reply)

    def ksr_onsend_route(self, msg):
        return 1

    def ksr_xhttp_event(self, msg, evname=None):
        return _guard(self.gw.on_http)

    def ksr_websocket_event(self, msg, evname=None):
        return _guard(self.gw.on_websocket_closed)

    def ksr_tcp_event(self, msg, evname=None):
        return _guard(self.gw.on_tcp_closed)

    def ksr_tm_event(self, msg, evname=None):
        if evname == "tm:local-request":
            return _guard(self.gw.on_local_request)
        return 1

    def ksr_uac_reply(self, msg):
        return _guard(self.gw.on_uac_reply)

    def ksr_proxy_reply(self, msg):
        return _guard(self.gw.proxy.on_media_reply)

    def ksr_proxy_failure(self, msg):
        return _guard(self.gw.proxy.on_media_failure)

    def ksr_inbound_continue(self, msg):
        return _guard(self.gw.on_inbound_continue)

    def ksr_timer(self, msg, evname=None):
        return _guard(self.gw.on_timer)
