"""The simulator's prebuilt frames, which the benchmark sends."""

from __future__ import annotations

from balancewatch.devtools.simulator import text_frame


def test_text_frame_headers() -> None:
    assert text_frame("ab") == b"\x81\x02ab"
    assert text_frame("x" * 200)[:4] == b"\x81\x7e\x00\xc8"
    assert text_frame("x" * 70_000)[:10] == b"\x81\x7f" + (70_000).to_bytes(8, "big")
