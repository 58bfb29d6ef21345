"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, against the real gateway.

Playwright's own browser download is never used: `executable_path` points at
Debian's Chromium. Fake media devices stand in for the microphone; a WAV tone
makes the fake microphone continuous.
"""

from __future__ import annotations

import math
import os
import struct
import wave
from pathlib import Path
from typing import Callable, Iterator

import pytest

from harness.gateway import SUBSCRIBERS, Gateway

CHROMIUM = os.environ.get("GW_CHROMIUM", "/usr/bin/chromium")


def tone_wav(path: Path, seconds: float = 5.0, hz: float = 440.0, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / rate)))
                          for i in range(int(seconds * rate)))
        w.writeframes(frames)
    return path


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    wav = tone_wav(tmp_path_factory.mktemp("media") / "tone.wav")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}",
                "--autoplay-policy=no-user-gesture-required",
                # Two pages on this machine reach each other over loopback only.
                "--allow-loopback-in-peer-connection",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page_gateway(workdir) -> Iterator[Gateway]:
    gw = Gateway(workdir, env={"GW_UPSTREAM": "", "GW_SUBSCRIBERS": str(SUBSCRIBERS)}).start()
    yield gw
    gw.stop()


@pytest.fixture
def open_page(browser) -> Iterator[Callable]:
    """open_page(gw, query="") -> a Playwright page showing the agent page served by the gateway."""
    contexts = []

    def make(gw: Gateway, query: str = ""):
        context = browser.new_context(permissions=["microphone"])
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: print(f"[console {m.type}] {m.text}"))
        page.goto(f"{gw.http_url}/{query}")
        return page

    yield make
    for context in contexts:
        context.close()
