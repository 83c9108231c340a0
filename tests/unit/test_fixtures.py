"""The contract's example frames, vendored under tests/fixtures so a clone tests on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

VENDORED = Path(__file__).resolve().parents[1] / "fixtures" / "frames"
CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "realtime-contract" / "frames"


@pytest.mark.skipif(not CONTRACT.is_dir(), reason="no shared/ contract beside this checkout")
def test_vendored_frames_match_the_contract() -> None:
    """Every frame of shared/realtime-contract/frames is vendored byte for byte."""
    contract = {path.name: path.read_bytes() for path in CONTRACT.glob("*.json")}
    vendored = {path.name: path.read_bytes() for path in VENDORED.glob("*.json")}
    assert vendored == contract
