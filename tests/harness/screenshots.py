"""Screenshots of the agent page, written by the browser tests (the README shows one)."""

from __future__ import annotations

from pathlib import Path

from .gateway import ROOT

SCREENSHOTS = ROOT / ".run" / "screenshots"


def screenshot(page, name: str) -> Path:
    """Write a full-page PNG of the page's current state to .run/screenshots/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
