"""The frame parser: every frame is either the balance update it encodes or a rejection; and
through `Ingest`, every frame ends as exactly one row, ack, pong or rejected record."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from balancewatch import logs
from balancewatch.daemon.ingest import Ingest
from balancewatch.daemon.protocol import (
    MAX_AMOUNT_ADJUSTED,
    BalanceUpdate,
    Frame,
    Joined,
    Ping,
    Rejected,
    RejectReason,
    join_frame,
    leave_frame,
    parse_frame,
)
from balancewatch.daemon.rooms import wanted_rooms
from balancewatch.daemon.subscriptions import Subscriptions
from balancewatch.domain import Pair, Watch, is_address, room_for, watch_for
from balancewatch.pipeline.records import BalanceLine, PairKey, Tail, balance_line
from balancewatch.store.writes import RejectedRow
from tests.helpers import API_KEY, SOL, TOKEN, WALLET, WALLET2, room, unrecorded_coverage


def message(
    amount: str, *, wallet: str = WALLET, token: str = TOKEN, room_name: str | None = None
) -> str:
    room_name = room_name or room(wallet, token)
    return (
        f'{{"type":"message","room":"{room_name}",'
        f'"data":{{"wallet":"{wallet}","token":"{token}","amount":{amount}}}}}'
    )


# Postgres `numeric` input in plain notation: no exponent (a sign only for "-0" and the like).
PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def scale(amount: Decimal) -> int:
    """The digits after the point, as Postgres stores them."""
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def assert_amount(frame: Frame, expected: Decimal) -> None:
    """`frame` is a balance whose amount is `expected` in plain notation: the same value and
    the same digits after the point, so Postgres stores exactly what was sent."""
    assert isinstance(frame, BalanceUpdate)
    assert PLAIN_NUMBER.fullmatch(frame.amount)
    assert Decimal(frame.amount) == expected
    assert scale(Decimal(frame.amount)) == scale(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("76989.158861", "76989.158861"),
        ("1e-7", "0.0000001"),
        ("2e+21", "2000000000000000000000"),
        ("1.50", "1.50"),
        ("0", "0"),
        ("12345678901234567890123456789.123456789", "12345678901234567890123456789.123456789"),
        ("999999999999999999999999999999999999999", "999999999999999999999999999999999999999"),
        ("9.99e38", "999" + "0" * 36),
        ("1e-16383", "0." + "0" * 16382 + "1"),
        ("-0", "-0"),
    ],
)
def test_amount_keeps_its_exact_value_and_scale_in_plain_notation_without_a_float(
    text: str, expected: str
) -> None:
    frame = parse_frame(message(text))
    assert frame == BalanceUpdate(WALLET, TOKEN, expected, room())
    assert_amount(frame, Decimal(text))


def test_the_upstream_example_parses() -> None:
    example = {
        "type": "message",
        "data": {"wallet": WALLET, "token": TOKEN, "amount": 76989.158861},
        "room": room(),
    }
    assert parse_frame(json.dumps(example)) == BalanceUpdate(WALLET, TOKEN, "76989.158861", room())


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
        (message("1e400"), "amount_out_of_range"),
        (message("1e39"), "amount_out_of_range"),
        (message("1000000000000000000000000000000000000000"), "amount_out_of_range"),
        (message("1e999999999999999999999"), "amount_out_of_range"),
        (message("1e-16384"), "amount_out_of_range"),
        (message("-1e400"), "amount_out_of_range"),
        (message("1", wallet="not-an-address", token=TOKEN), "invalid_fields"),
        (message("1", wallet=WALLET, token="O" + TOKEN[1:]), "invalid_fields"),
        (message("1", room_name=room(WALLET, SOL)), "room_mismatch"),
        # On a wallet's room: another wallet's balance, or a token that is no address.
        (message("1", wallet=WALLET2, room_name=room(WALLET, None)), "room_mismatch"),
        (message("1", token="O" + TOKEN[1:], room_name=room(WALLET, None)), "invalid_fields"),
        (message("1", token="", room_name=room(WALLET, None)), "invalid_fields"),
    ],
)
def test_a_bad_frame_is_rejected_with_its_reason(frame: str, reason: str) -> None:
    result = parse_frame(frame)
    assert isinstance(result, Rejected)
    assert result.reason == reason


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (message("1", room_name=room(WALLET, SOL)), "room_mismatch"),
        (message("1", wallet=WALLET2, room_name=room(WALLET, None)), "room_mismatch"),
        (message("1", token="O" + TOKEN[1:], room_name=room(WALLET, None)), "invalid_fields"),
        (message("-1"), "negative_amount"),
    ],
)
def test_a_room_already_seen_well_formed_checks_each_message_all_the_same(
    frame: str, reason: str
) -> None:
    # Its room is remembered once a message on it parses: the next ones take a shorter way,
    # which must come to the same answer as the first, good or bad.
    assert isinstance(parse_frame(message("1")), BalanceUpdate)
    assert isinstance(
        parse_frame(message("1", token=SOL, room_name=room(WALLET, None))), BalanceUpdate
    )
    for _ in range(2):
        result = parse_frame(frame)
        assert isinstance(result, Rejected)
        assert result.reason == reason
    update = parse_frame(message("2", token=SOL, room_name=room(WALLET, None)))
    assert update == BalanceUpdate(WALLET, SOL, "2", room(WALLET, None), wallet_room=True)
    assert parse_frame(message("3")) == BalanceUpdate(WALLET, TOKEN, "3", room())


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


def test_a_message_on_a_wallet_room_is_a_balance_of_the_token_it_names() -> None:
    update = parse_frame(message("12.5", token=SOL, room_name=room(WALLET, None)))
    assert update == BalanceUpdate(WALLET, SOL, "12.5", room(WALLET, None), wallet_room=True)
    assert isinstance(update, BalanceUpdate)
    assert update.room == room(WALLET, None)


def test_rooms_round_trip_and_frames_match_the_upstream_shape() -> None:
    assert room_for(WALLET, TOKEN) == f"wallet:{WALLET}:{TOKEN}:balance"
    assert room_for(WALLET, None) == f"wallet:{WALLET}:balance"
    assert watch_for(room_for(WALLET, TOKEN)) == (WALLET, TOKEN)
    assert watch_for(room_for(WALLET, None)) == (WALLET, None)
    assert watch_for(f"wallet:{WALLET}::balance") is None
    assert watch_for("wallet:short:short:balance") is None
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


def within_bounds(amount: Decimal) -> bool:
    """The documented bounds: below 1e39 (by its adjusted exponent), and a scale Postgres holds."""
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    return amount.adjusted() <= MAX_AMOUNT_ADJUSTED and -exponent <= 16383


@given(json_values)
def test_any_json_value_as_amount_yields_that_number_or_a_rejection(amount: object) -> None:
    frame = parse_frame(message(json.dumps(amount)))
    is_number = isinstance(amount, int | float) and not isinstance(amount, bool)
    in_range = is_number and within_bounds(Decimal(json.dumps(amount)))
    if in_range and amount >= 0:  # type: ignore[operator]
        assert_amount(frame, Decimal(json.dumps(amount)))
        assert isinstance(frame, BalanceUpdate)
        assert (frame.wallet, frame.token) == (WALLET, TOKEN)
    else:
        assert isinstance(frame, Rejected)


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=0, places=None))
def test_any_decimal_written_as_json_text_comes_back_equal_or_out_of_range(
    amount: Decimal,
) -> None:
    text = format(amount, "f") if -30 < amount.adjusted() < 30 else str(amount)
    frame = parse_frame(message(text.replace("E", "e")))
    if within_bounds(amount):
        assert_amount(frame, amount)
    else:
        assert isinstance(frame, Rejected)
        assert frame.reason == "amount_out_of_range"


# -- any structured frame ----------------------------------------------------------------------

BASE58_AND_LOOKALIKES = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz0OIl:"
addresses = st.one_of(
    st.sampled_from([WALLET, TOKEN, SOL, WALLET2]),
    st.text(BASE58_AND_LOOKALIKES, min_size=30, max_size=46),  # valid and invalid addresses
    st.text(max_size=50),
)
json_texts = json_values.map(json.dumps)
valid_amounts = st.one_of(
    st.decimals(min_value=0, max_value=Decimal("1e38"), allow_nan=False, places=None).map(str),
    st.sampled_from(["76989.158861", "1e-7", "2e+21", "0", "-0", "1.50", "9.99e38"]),
)
amount_texts = st.one_of(
    valid_amounts,
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(str),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    st.sampled_from(["1e400", "1e39", "-1", "1e-16384", "0e500", "NaN", "Infinity", "-Infinity"]),
    json_texts,
)
MUTATIONS = (
    "drop_field",
    "retype_field",
    "other_type",
    "extra_field",
    "other_room",
    "other_pair",
    "drop_data_field",
    "retype_data_field",
    "extra_data_field",
    "other_amount",
    "other_amount",  # the amount is where most of the checks are: try it more often
    "other_amount",
)


def render(fields: dict[str, Any], order: list[str]) -> str:
    """A JSON object from already-encoded values (a dict value is rendered as an object)."""
    parts = []
    for key in order:
        value = fields[key]
        text = render(value, sorted(value)) if isinstance(value, dict) else value
        parts.append(f"{json.dumps(key)}:{text}")
    return "{" + ",".join(parts) + "}"


@st.composite
def structured_frames(draw: st.DrawFn) -> str:
    """A valid balance message, then up to four random mutations of its shape and values."""
    wallet, token = draw(st.sampled_from([WALLET, WALLET2])), draw(st.sampled_from([TOKEN, SOL]))
    data = {"wallet": json.dumps(wallet), "token": json.dumps(token), "amount": draw(valid_amounts)}
    top: dict[str, Any] = {
        "type": '"message"',
        "room": json.dumps(room_for(wallet, token)),
        "data": data,
    }
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=4)):
        current = top.get("data")
        if "data_field" in mutation or mutation in ("other_pair", "other_amount"):
            if isinstance(current, dict):
                mutate_data(draw, mutation, top, current)
        else:
            mutate_top(draw, mutation, top)
    return render(top, draw(st.permutations(sorted(top))))


def fresh_key(draw: st.DrawFn, taken: Collection[str]) -> str:
    key = draw(st.text(max_size=8))
    while key in taken:
        key += "_"
    return key


def mutate_top(draw: st.DrawFn, mutation: str, top: dict[str, Any]) -> None:
    if mutation == "drop_field" and top:
        del top[draw(st.sampled_from(sorted(top)))]
    elif mutation == "retype_field":
        top[draw(st.sampled_from(["type", "room", "data"]))] = draw(json_texts)
    elif mutation == "other_type":
        kinds = ["joined", "ping", "error", "join", "Message", ""]
        top["type"] = json.dumps(draw(st.sampled_from(kinds)))
    elif mutation == "extra_field":
        top[fresh_key(draw, top)] = draw(json_texts)
    elif mutation == "other_room":
        top["room"] = json.dumps(draw(st.builds(room_for, addresses, addresses) | st.text()))


def mutate_data(draw: st.DrawFn, mutation: str, top: dict[str, Any], data: dict[str, str]) -> None:
    if mutation == "other_pair":
        # Addresses that may be invalid, with the room that matches them.
        wallet, token = draw(addresses), draw(addresses)
        data["wallet"], data["token"] = json.dumps(wallet), json.dumps(token)
        top["room"] = json.dumps(room_for(wallet, token))
    elif mutation == "drop_data_field" and data:
        del data[draw(st.sampled_from(sorted(data)))]
    elif mutation == "retype_data_field":
        data[draw(st.sampled_from(["wallet", "token", "amount"]))] = draw(json_texts)
    elif mutation == "extra_data_field":
        data[fresh_key(draw, data)] = draw(json_texts)
    elif mutation == "other_amount":
        data["amount"] = draw(amount_texts)


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class Balance:
    """A balance message as the standard library reads it: the amount as a Decimal."""

    wallet: str
    token: str
    amount: Decimal


def encoded(frame: str) -> Balance | Joined | Ping | None:
    """What a frame encodes, decoded with the standard library (numbers as Decimal) and checked
    against the protocol notes by hand: independent of the parser. None: must be rejected."""
    try:
        value = json.loads(
            frame, parse_float=Decimal, parse_int=Decimal, parse_constant=_no_constants
        )
    except (ValueError, ArithmeticError):
        return None
    if not isinstance(value, dict):
        return None
    kind, room_name = value.get("type"), value.get("room")
    if kind == "ping":
        return Ping()
    if kind == "joined":
        return Joined(room_name) if isinstance(room_name, str) else None
    data = value.get("data")
    if kind != "message" or set(value) != {"type", "room", "data"} or not isinstance(data, dict):
        return None
    if set(data) != {"wallet", "token", "amount"}:
        return None
    wallet, token, amount = data["wallet"], data["token"], data["amount"]
    if not (isinstance(wallet, str) and is_address(wallet)):
        return None
    if not (isinstance(token, str) and is_address(token)) or room_name != room_for(wallet, token):
        return None
    if not isinstance(amount, Decimal) or amount < 0 or not within_bounds(amount):
        return None
    return Balance(wallet, token, amount)


REASONS = frozenset(get_args(RejectReason))


@settings(max_examples=200)
@given(structured_frames())
def test_any_structured_frame_yields_exactly_what_it_encodes_or_a_rejection(frame: str) -> None:
    result = parse_frame(frame)
    expected = encoded(frame)
    event(result.reason if isinstance(result, Rejected) else type(result).__name__)
    if expected is None:
        assert isinstance(result, Rejected)
        assert result.reason in REASONS
    elif isinstance(expected, Balance):
        # Equal as a Decimal is not enough: the digits after the point are kept as written.
        assert_amount(result, expected.amount)
        assert isinstance(result, BalanceUpdate)
        assert (result.wallet, result.token) == (expected.wallet, expected.token)
    else:
        assert result == expected


# -- every frame through Ingest ------------------------------------------------------------------

HELD: tuple[Pair, ...] = ((WALLET, TOKEN), (WALLET2, SOL))
MAX_FRAME_BYTES = 1024
REJECTED_FRAME_CHARS = 256


@dataclass
class RecordingSink:
    """The writer as Ingest and Subscriptions see it, recording what they hand it."""

    rows: list[BalanceLine] = field(default_factory=list)
    pairs: list[PairKey] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    status: list[tuple[Watch, str]] = field(default_factory=list)

    def add(self, pair: PairKey, tail: Tail) -> None:
        self.rows.append(pair + tail)
        self.pairs.append(pair)

    def add_rejected(self, row: RejectedRow) -> None:
        self.rejected.append(row)

    def set_status(self, pairs: Collection[Watch], state: str, error: str | None = None) -> None:
        self.status.extend((pair, state) for pair in pairs)


class SilentSender:
    async def join(self, rooms: Collection[str]) -> None:
        pass

    async def leave(self, rooms: Collection[str]) -> None:
        pass


def storable(text: str) -> bool:
    """What Postgres `text` takes: no NUL, no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def pad_with_two_byte_characters(count: int) -> str:
    return json.dumps({"type": "ping", "pad": "é" * count}, ensure_ascii=False)


odd_characters = st.sampled_from(["\x00", "\udc80", "\ud83d", "é", "€", "\n", "\\", '"', "\x7f"])
any_frame: st.SearchStrategy[str | bytes] = st.one_of(
    structured_frames(),
    st.text(max_size=300),
    st.lists(odd_characters | st.characters(), max_size=100).map("".join),
    st.binary(max_size=300),
    # Valid JSON padded past the limit, in ASCII and in characters of two bytes each.
    structured_frames().map(lambda frame: frame + " " * MAX_FRAME_BYTES),
    st.integers(0, 900).map(pad_with_two_byte_characters),
    # A secret anywhere: in a frame, in its room, in its type.
    st.builds(lambda a, b: a + API_KEY + b, st.text(max_size=20), st.text(max_size=20)),
    st.sampled_from(
        [
            json.dumps({"type": "error", "room": f"wallet:{API_KEY}", "message": "no"}),
            json.dumps({"type": API_KEY}),
            json.dumps({"type": "message", "room": API_KEY, "data": None}),
        ]
    ),
)


async def test_every_frame_through_ingest_ends_as_exactly_one_row_ack_pong_or_rejected_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scrubber = logs.SecretScrubber()
    scrubber.register([API_KEY])
    monkeypatch.setattr(logs, "scrubber", scrubber)
    subscriptions = Subscriptions(RecordingSink(), unrecorded_coverage())
    await subscriptions.want(wanted_rooms(HELD))
    await subscriptions.connected(SilentSender())

    @settings(max_examples=300, deadline=None)
    @given(any_frame)
    def check(raw: str | bytes) -> None:
        sink = RecordingSink()
        ingest = ingest_into(subscriptions, sink)
        pong = False
        if isinstance(raw, str):
            pong = ingest.text(raw)
        else:
            ingest.binary(raw)
        outcomes = len(sink.rows) + ingest.acks + pong + len(sink.rejected)
        event(next(iter(ingest.rejected), "row" if sink.rows else "ack" if ingest.acks else "pong"))
        assert outcomes == 1
        if sink.rows:
            (line,) = sink.rows
            assert isinstance(raw, str)
            update = parse_frame(raw)
            assert isinstance(update, BalanceUpdate)
            assert (update.wallet, update.token) in HELD
            stamp = line.split(b"\t")[3].decode()
            assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0)
            assert line == balance_line(update.wallet, update.token, update.amount, stamp)
        if not sink.rejected:
            assert ingest.rejected == Counter()
            return
        ((_, reason, detail, room_name, frame, frame_size),) = sink.rejected
        assert ingest.rejected == Counter({reason: 1})
        assert reason in REASONS
        wire = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        assert frame_size == len(wire)
        for text in (frame, detail, room_name or ""):
            assert len(text) <= REJECTED_FRAME_CHARS
            assert storable(text)
            assert API_KEY not in text

    check()


def ingest_into(subscriptions: Subscriptions, sink: RecordingSink) -> Ingest:
    """An ingest whose rows and rejects go to `sink`, with the daemon's limits."""
    return Ingest(
        subscriptions,
        sink,
        sink,
        max_frame_bytes=MAX_FRAME_BYTES,
        rejected_frame_chars=REJECTED_FRAME_CHARS,
    )


async def test_a_row_reaches_the_writer_as_its_pair_key_made_once_a_token_room_and_its_tail() -> (
    None
):
    subscriptions = Subscriptions(RecordingSink(), unrecorded_coverage())
    await subscriptions.want(wanted_rooms([(WALLET, TOKEN), (WALLET2, None)]))
    await subscriptions.connected(SilentSender())
    sink = RecordingSink()
    ingest = ingest_into(subscriptions, sink)
    frames = [
        message("1"),
        message("2"),
        message("3", wallet=WALLET2, token=TOKEN, room_name=room(WALLET2, None)),
        message("4", wallet=WALLET2, token=SOL, room_name=room(WALLET2, None)),
    ]
    for frame in frames:
        assert not ingest.text(frame)
    expected = [
        (WALLET, TOKEN, "1"),
        (WALLET, TOKEN, "2"),
        (WALLET2, TOKEN, "3"),
        (WALLET2, SOL, "4"),
    ]
    assert [tuple(line.decode().split("\t")[:3]) for line in sink.rows] == expected
    assert sink.pairs == [f"{wallet}\t{token}".encode() for wallet, token, _ in expected]
    # A token room's rows share one key, hashed once at the COPY; a wallet room's pairs differ.
    assert sink.pairs[0] is sink.pairs[1]
