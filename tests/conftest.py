import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The pure core (kemi/wsgw) and the test harness (tests/harness) are imported by tests.
for path in (ROOT / "kemi", ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Logs and runtime files of the gateways a test session starts."""
    return tmp_path_factory.mktemp("gw")
