"""The RPC client's pure parts: its settings are checked without quoting the URL, the URL is
in no repr, the parts of it that look like a key are found, and Retry-After is read safely."""

from __future__ import annotations

import pytest

from balancewatch.chain.rpc import (
    MAX_RETRY_AFTER,
    RpcConfig,
    SolanaRpc,
    retry_after_seconds,
)
from balancewatch.settings import rpc_url_secrets

SECRET_URL = "https://mainnet.example.com/rpc/SECRET-PATH-TOKEN-0123?api-key=SECRET-QUERY"


def test_the_url_is_in_no_repr() -> None:
    config = RpcConfig(SECRET_URL)
    client = SolanaRpc(config)
    for text in (repr(config), str(config), repr(client)):
        assert "SECRET" not in text
        assert "max_rps=10.0" in text


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"url": "ftp://host/SECRET-PATH"}, "http:// or https://"),
        ({"url": "SECRET-PATH-no-scheme"}, "http:// or https://"),
        ({"url": "https:///SECRET-PATH"}, "http:// or https://"),
        ({"url": "http://[SECRET-PATH"}, "not a valid URL"),
        ({"max_rps": 0}, "max_rps must be positive"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"timeout": -1}, "timeout must be positive"),
        ({"max_attempts": 0}, "max_attempts must be positive"),
        ({"retry_initial": -0.5}, "retry_initial must not be negative"),
    ],
)
def test_bad_settings_are_refused_without_quoting_the_url(
    overrides: dict[str, object], problem: str
) -> None:
    values: dict[str, object] = {"url": SECRET_URL, **overrides}
    with pytest.raises(ValueError, match=problem) as refused:
        RpcConfig(**values)  # type: ignore[arg-type]
    assert "SECRET" not in str(refused.value)


def test_the_parts_of_the_url_that_look_like_a_key_are_found() -> None:
    assert rpc_url_secrets(SECRET_URL) == [
        SECRET_URL,
        "/rpc/SECRET-PATH-TOKEN-0123?api-key=SECRET-QUERY",
        "SECRET-PATH-TOKEN-0123",
        "SECRET-QUERY",
    ]
    assert rpc_url_secrets("http://127.0.0.1:8765/rpc") == []
    assert rpc_url_secrets("http://127.0.0.1:8765/rpc?cluster=main") == []


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        (" 0.5 ", 0.5),
        ("0", 0.0),
        ("86400", MAX_RETRY_AFTER),
        (None, None),
        ("", None),
        ("soon", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_retry_after_is_a_capped_number_of_seconds_or_none(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after_seconds(header) == seconds


async def test_reading_before_opening_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="not open"):
        await SolanaRpc(RpcConfig(SECRET_URL)).read([])
