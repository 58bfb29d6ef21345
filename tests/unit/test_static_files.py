from wsgw.static_files import FILES, lookup


def test_known_paths_are_served_from_the_client_dir(tmp_path):
    (tmp_path / "index-custom.html").write_text("<html>page</html>")
    page = lookup("/", str(tmp_path))
    assert page is not None and page.text == "<html>page</html>"
    assert page.content_type.startswith("text/html")


def test_unknown_and_traversal_paths_are_not_served(tmp_path):
    (tmp_path / "index-custom.html").write_text("x")
    for path in ("/../kemi/gateway.py", "/etc/passwd", "/client/index-custom.html", "/index-custom.html/"):
        assert lookup(path, str(tmp_path)) is None


def test_missing_file_is_none(tmp_path):
    assert lookup("/webrtc-custom.min.js", str(tmp_path)) is None


def test_every_entry_is_a_plain_relative_file():
    for name, _ in FILES.values():
        assert not name.startswith("/") and ".." not in name
