"""The frame parser: every frame is either the balance update it encodes or a rejection."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancewatch.protocol import (
    BalanceUpdate,
    Joined,
    Ping,
    Rejected,
    is_address,
    join_frame,
    leave_frame,
    pair_for,
    parse_frame,
    room_for,
)
from tests.helpers import SOL, TOKEN, WALLET, room


def message(
    amount: str, *, wallet: str = WALLET, token: str = TOKEN, room_name: str | None = None
) -> str:
    room_name = room_name or room(wallet, token)
    return (
        f'{{"type":"message","room":"{room_name}",'
        f'"data":{{"wallet":"{wallet}","token":"{token}","amount":{amount}}}}}'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("76989.158861", "76989.158861"),
        ("1e-7", "1E-7"),
        ("2e+21", "2E+21"),
        ("1.50", "1.50"),
        ("0", "0"),
        ("12345678901234567890123456789.123456789", "12345678901234567890123456789.123456789"),
    ],
)
def test_amount_is_decoded_exactly_as_written_without_a_float(text: str, expected: str) -> None:
    frame = parse_frame(message(text))
    assert frame == BalanceUpdate(WALLET, TOKEN, Decimal(text))
    assert isinstance(frame, BalanceUpdate)
    assert str(frame.amount) == expected


def test_the_upstream_example_parses() -> None:
    example = {
        "type": "message",
        "data": {"wallet": WALLET, "token": TOKEN, "amount": 76989.158861},
        "room": room(),
    }
    assert parse_frame(json.dumps(example)) == BalanceUpdate(WALLET, TOKEN, Decimal("76989.158861"))


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "not_json"),
        ("", "not_json"),
        ("[1,2]", "not_object"),
        ('"text"', "not_object"),
        ('{"type":"surprise"}', "unknown_type"),
        ('{"room":"x"}', "unknown_type"),
        ('{"type":"message"}', "invalid_fields"),
        ('{"type":"message","room":"r","data":null}', "invalid_fields"),
        ('{"type":"message","room":"r","data":{"wallet":"w","token":"t"}}', "invalid_fields"),
        (
            '{"type":"message","room":1,"data":{"wallet":"w","token":"t","amount":1}}',
            "invalid_fields",
        ),
        (message('"5"'), "amount_not_number"),
        (message("true"), "amount_not_number"),
        (message("null"), "amount_not_number"),
        (message("[1]"), "amount_not_number"),
        (message("NaN"), "not_json"),
        (message("Infinity"), "not_json"),
        (message("-1"), "negative_amount"),
        (message("1e200000"), "amount_out_of_range"),
        (message("1", room_name=room(WALLET, SOL)), "room_mismatch"),
    ],
)
def test_a_bad_frame_is_rejected_with_its_reason(frame: str, reason: str) -> None:
    result = parse_frame(frame)
    assert isinstance(result, Rejected)
    assert result.reason == reason


def test_an_extra_field_in_a_message_is_rejected() -> None:
    frame = message("1")[:-1] + ',"extra":1}'
    result = parse_frame(frame)
    assert isinstance(result, Rejected)
    assert result.reason == "invalid_fields"


def test_joined_and_ping_frames_are_recognised() -> None:
    assert parse_frame(f'{{"type":"joined","room":"{room()}"}}') == Joined(room())
    assert parse_frame('{"type":"ping"}') == Ping()


def test_an_unknown_frame_keeps_its_room_for_the_status() -> None:
    result = parse_frame(f'{{"type":"error","room":"{room()}"}}')
    assert result == Rejected("unknown_type", "type 'error'", room())


def test_rooms_round_trip_and_frames_match_the_upstream_shape() -> None:
    assert room_for(WALLET, TOKEN) == f"wallet:{WALLET}:{TOKEN}:balance"
    assert pair_for(room_for(WALLET, TOKEN)) == (WALLET, TOKEN)
    assert pair_for("wallet:short:short:balance") is None
    assert json.loads(join_frame(room())) == {"type": "join", "room": room()}
    assert json.loads(leave_frame(room())) == {"type": "leave", "room": room()}


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        (WALLET, True),
        (SOL, True),
        ("0" * 32, False),
        ("O" + WALLET[1:], False),
        ("a" * 31, False),
        ("a" * 45, False),
    ],
)
def test_addresses_must_be_base58_of_32_to_44_characters(text: str, valid: bool) -> None:
    assert is_address(text) is valid


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.text(max_size=300) | st.binary(max_size=300))
def test_any_input_yields_a_frame_and_never_raises(raw: str | bytes) -> None:
    assert isinstance(parse_frame(raw), BalanceUpdate | Joined | Ping | Rejected)


@given(json_values)
def test_any_json_value_as_amount_yields_that_number_or_a_rejection(amount: object) -> None:
    frame = parse_frame(message(json.dumps(amount)))
    is_number = isinstance(amount, int | float) and not isinstance(amount, bool)
    if is_number and amount >= 0:  # type: ignore[operator]
        assert frame == BalanceUpdate(WALLET, TOKEN, Decimal(json.dumps(amount)))
    else:
        assert isinstance(frame, Rejected)


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=0, places=None))
def test_any_decimal_written_as_json_text_comes_back_equal(amount: Decimal) -> None:
    text = format(amount, "f") if amount.adjusted() < 30 else str(amount)
    frame = parse_frame(message(text.replace("E", "e")))
    assert isinstance(frame, BalanceUpdate)
    assert frame.amount == amount
