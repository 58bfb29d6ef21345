from wsgw import metrics, protocol


def test_counters_by_label_and_gauges(make_ctx, conn):
    ctx = make_ctx()
    metrics.frame_in(ctx, "ping")
    metrics.frame_in(ctx, "ping")
    ctx.send(conn, protocol.error_message("bad_json", "x"))
    ctx.send(conn, protocol.message("callFailed", {"callId": "c", "code": 486, "reason": "busy"}))
    text = metrics.render(ctx)
    assert 'wsgw_frames_in_total{type="ping"} 2' in text
    assert 'wsgw_frames_out_total{type="error"} 1' in text
    assert 'wsgw_errors_total{code="bad_json"} 1' in text
    assert 'wsgw_calls_failed_total{reason="busy"} 1' in text
    assert "# TYPE wsgw_calls_active gauge\nwsgw_calls_active 0" in text
    assert text.endswith("\n")


def test_label_values_from_clients_are_sanitised(make_ctx):
    ctx = make_ctx()
    metrics.frame_in(ctx, 'a"}\nwsgw_fake 1')
    text = metrics.render(ctx)
    assert "\nwsgw_fake" not in text
    assert 'type="a___wsgw_fake_1"' in text


def test_legacy_registrations_are_a_health_field_and_a_gauge(make_ctx):
    from wsgw.health import health

    ctx = make_ctx()
    assert health(ctx)["legacyRegistrations"] == 0  # no registrar behind the context
    assert "# TYPE wsgw_legacy_registrations gauge\nwsgw_legacy_registrations 0" in metrics.render(ctx)
    ctx.legacy_registrations = lambda: 3  # the adapter reads usrloc
    assert health(ctx)["legacyRegistrations"] == 3
    assert "\nwsgw_legacy_registrations 3\n" in metrics.render(ctx)


def test_setup_histogram_is_cumulative(make_ctx):
    ctx = make_ctx()
    for seconds in (0.003, 0.02, 0.02, 0.7, 99.0):
        metrics.observe_setup(ctx, seconds)
    text = metrics.render(ctx)
    assert 'wsgw_call_setup_seconds_bucket{le="0.005"} 1' in text
    assert 'wsgw_call_setup_seconds_bucket{le="0.01"} 1' in text
    assert 'wsgw_call_setup_seconds_bucket{le="0.025"} 3' in text
    assert 'wsgw_call_setup_seconds_bucket{le="1.0"} 4' in text
    assert 'wsgw_call_setup_seconds_bucket{le="30.0"} 4' in text
    assert 'wsgw_call_setup_seconds_bucket{le="+Inf"} 5' in text
    assert "wsgw_call_setup_seconds_count 5" in text
    assert "wsgw_call_setup_seconds_sum 99.743" in text
