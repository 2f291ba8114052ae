"""The Datastream wire protocol: room names, frames we send, and parsing frames we receive.

Everything here is pure: bytes in, a typed result out. The read loop never sees an exception
from a frame, only a `Rejected` with a reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Final, Literal

import msgspec

from balancewatch.domain import is_address, is_room, room_for

# A sanity bound on the size of an amount: at most 39 digits before the point (adjusted
# exponent 38), so anything from 1e39 up is refused. An SPL token amount is a u64 count of base
# units (under 2e19) and even the u128 range ends at 3.4e38: a bigger number is not a balance.
# It also keeps `1e400`-style numbers, which Postgres would store as hundreds of digits, out.
MAX_AMOUNT_ADJUSTED: Final = 38
# Postgres `numeric` holds at most 16383 digits after the point.
_NUMERIC_MAX_SCALE: Final = 16383

# A detail that quotes the frame (a type, a field name) quotes this much of it.
_DETAIL_CHARS: Final = 200

PING: Final = '{"type":"ping"}'
PONG: Final = '{"type":"pong"}'


# Bytes, as a text frame's payload goes on the wire: a million joins are not encoded twice.
def join_frame(room: str) -> bytes:
    return msgspec.json.encode({"type": "join", "room": room})


def leave_frame(room: str) -> bytes:
    return msgspec.json.encode({"type": "leave", "room": room})


class BalanceUpdate(msgspec.Struct, frozen=True, gc=False):
    """One balance, as parsed (made for every message: a Struct is made in a fraction of the
    time a frozen dataclass takes)."""

    wallet: str
    token: str
    amount: str  # plain decimal notation, as Postgres `numeric` input
    # The room it was sent on: the token's, or the wallet's (then `wallet_room`). The frame's
    # own string, whose hash each look-up of the ingest reuses.
    room: str
    wallet_room: bool = False


@dataclass(frozen=True, slots=True)
class Joined:
    room: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


RejectReason = Literal[
    "not_json",
    "not_object",
    "unknown_type",
    "invalid_fields",
    "amount_not_number",
    "amount_out_of_range",
    "negative_amount",
    "room_mismatch",
    "room_not_joined",
    "binary_frame",
    "too_large",
]


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str
    room: str | None = None


Frame = BalanceUpdate | Joined | Ping | Rejected


# gc=False: made per message and holding only strings, they can never be part of a cycle,
# so the garbage collector need not track them.
class _BalanceData(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    wallet: str
    token: str
    amount: msgspec.Raw


class _MessageFrame(
    msgspec.Struct, tag="message", tag_field="type", forbid_unknown_fields=True, gc=False
):
    room: str
    data: _BalanceData


class _JoinedFrame(msgspec.Struct, tag="joined", tag_field="type"):
    room: str


class _PingFrame(msgspec.Struct, tag="ping", tag_field="type"):
    pass


_decoder = msgspec.json.Decoder(_MessageFrame | _JoinedFrame | _PingFrame)
_any_decoder = msgspec.json.Decoder()


def parse_frame(raw: str | bytes) -> Frame:
    """Classify one text frame. Never raises."""
    try:
        frame = _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _classify_failure(raw, exc)
    except UnicodeEncodeError:  # a str with a lone surrogate: no websocket text frame has one
        return Rejected("not_json", "the frame is not valid Unicode text")
    if isinstance(frame, _MessageFrame):
        return _balance_update(frame)
    if isinstance(frame, _JoinedFrame):
        return Joined(frame.room)
    return Ping()


# Rooms found well formed, with the wallet and the token (None: the wallet's room) they spell
# out. The same few rooms come back message after message: a message on a known room is checked
# with two string comparisons instead of building its name and matching the pattern again.
_known_rooms: dict[str, tuple[str, str | None]] = {}
_KNOWN_ROOMS_MAX: Final = 16_384


def _balance_update(frame: _MessageFrame) -> BalanceUpdate | Rejected:
    data = frame.data
    # The amount as Postgres `numeric` input in plain notation, exactly as written; never
    # through a binary float. msgspec has checked the JSON grammar: a number is ASCII and has
    # no leading zeros, so a plain non-negative one below 1e39 is the common case, checked
    # here without making a Decimal (and without a call: this runs for every message).
    text = bytes(data.amount)
    integer, _, fraction = text.partition(b".")
    if (
        integer.isdigit()
        and len(integer) <= MAX_AMOUNT_ADJUSTED + 1
        and (not fraction or fraction.isdigit())
        and len(fraction) <= _NUMERIC_MAX_SCALE
    ):
        amount = text.decode("ascii")
    else:
        unusual = _parse_unusual_amount(text)
        if isinstance(unusual, Rejected):
            return Rejected(unusual.reason, unusual.detail, frame.room)
        amount = unusual
    room, wallet, token = frame.room, data.wallet, data.token
    known = _known_rooms.get(room)
    if known is not None and known[0] == wallet:
        if known[1] == token:
            return BalanceUpdate(wallet, token, amount, room)
        if known[1] is None and is_address(token):
            return BalanceUpdate(wallet, token, amount, room, True)
    return _checked_update(room, wallet, token, amount)


def _checked_update(room: str, wallet: str, token: str, amount: str) -> BalanceUpdate | Rejected:
    """A message on a room not known yet, or that does not match its room."""
    token_room = room == room_for(wallet, token)
    wallet_room = not token_room and room == room_for(wallet, None)
    # A token's room that matches spells out both addresses: one pattern checks the two at
    # once. A wallet's room spells out the wallet only.
    if token_room:
        valid = is_room(room)
    elif wallet_room:
        valid = is_room(room) and is_address(token)
    else:
        valid = is_address(wallet) and is_address(token)
    if not valid:
        return Rejected("invalid_fields", "data.wallet or data.token is not a base58 address", room)
    if not (token_room or wallet_room):
        return Rejected(
            "room_mismatch",
            "room is neither data.wallet's room nor that of data.wallet and data.token",
            room,
        )
    if len(_known_rooms) >= _KNOWN_ROOMS_MAX:
        _known_rooms.clear()
    _known_rooms[room] = (wallet, token if token_room else None)
    return BalanceUpdate(wallet, token, amount, room, wallet_room)


def _parse_unusual_amount(text: bytes) -> str | Rejected:
    """A negative number, one with an exponent, or not a number at all."""
    if not text or text[:1] not in b"-0123456789":
        return Rejected("amount_not_number", "data.amount is not a JSON number")
    try:
        amount = Decimal(text.decode("ascii"))
    except (InvalidOperation, UnicodeDecodeError):
        # Valid JSON number grammar that Decimal refuses: an exponent beyond its own limits.
        return Rejected("amount_out_of_range", "data.amount has an exponent beyond any bound")
    if amount.adjusted() > MAX_AMOUNT_ADJUSTED:
        return Rejected("amount_out_of_range", "data.amount is 1e39 or more, beyond any balance")
    # Without an exponent, a number has fewer digits after the point than characters, so only
    # a long one or one with an exponent needs its scale (as_tuple() copies every digit).
    may_be_too_fine = len(text) > _NUMERIC_MAX_SCALE or b"e" in text or b"E" in text
    if may_be_too_fine and -_exponent(amount) > _NUMERIC_MAX_SCALE:
        return Rejected(
            "amount_out_of_range", "data.amount has more digits after the point than numeric holds"
        )
    if amount.is_signed() and amount != 0:
        return Rejected("negative_amount", "data.amount is negative")
    # COPY sends text, and Postgres 14 and older refuse an exponent beyond 1000 in text
    # input: written out in full, the number keeps its value and scale on any version.
    return format(amount, "f")


def _exponent(amount: Decimal) -> int:
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # a finite Decimal always has an int exponent
    return exponent


def _classify_failure(raw: str | bytes, exc: Exception) -> Rejected:
    try:
        value = _any_decoder.decode(raw)
    except msgspec.DecodeError:
        return Rejected("not_json", str(exc))
    if not isinstance(value, dict):
        return Rejected("not_object", f"a JSON {type(value).__name__}, not an object")
    room = value.get("room")
    room = room if isinstance(room, str) else None
    kind = value.get("type")
    if kind not in ("message", "joined", "ping"):
        return Rejected("unknown_type", f"type {_short(repr(kind))}", room)
    return Rejected("invalid_fields", _short(str(exc)), room)


def _short(text: str, limit: int = _DETAIL_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."
