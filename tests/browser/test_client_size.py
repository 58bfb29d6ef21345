"""The client library's size budget (minified <= 10 KB, gzipped <= 4 KB)."""

import gzip

from harness.gateway import ROOT

MIN_JS = ROOT / "client" / "dist" / "webrtc-custom.min.js"


def test_minified_library_fits_the_budget():
    assert MIN_JS.exists(), "build the client first: make client"
    data = MIN_JS.read_bytes()
    assert len(data) <= 10 * 1024, f"{len(data)} bytes minified"
    assert len(gzip.compress(data, 9)) <= 4 * 1024, f"{len(gzip.compress(data, 9))} bytes gzipped"


def test_minified_library_is_built_from_the_current_source():
    source = ROOT / "client" / "webrtc-custom.js"
    assert MIN_JS.stat().st_mtime >= source.stat().st_mtime, "client/dist is stale: make client"
