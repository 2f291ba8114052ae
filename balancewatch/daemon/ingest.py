"""What happens to each frame read from the websocket: store it, ack it, or reject it.

Every frame ends in exactly one of four ways: a balance row, a `joined` ack, a pong to send,
or a rejected record. A rejected frame is never silently dropped: it is counted by reason,
logged, and kept (secrets scrubbed, truncated) for the `rejected_messages` table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Final, Protocol

from balancewatch import logs
from balancewatch.daemon.protocol import BalanceUpdate, Joined, Ping, Rejected, parse_frame
from balancewatch.daemon.subscriptions import Subscriptions
from balancewatch.pipeline.records import PairKey, Stamps, Tail
from balancewatch.store.writes import RejectedRow

log = logs.get_logger(__name__)

# How much of a rejected frame a log line (and a room's last_error) quotes; the table keeps more.
_SAMPLE_CHARS: Final = 200
# Token rooms whose pair key is kept (about 350 bytes each with the room's name: 6 MB at most),
# bounded as the parser bounds the rooms it knows: emptied when full, so a watchlist of a
# million pairs cannot make it grow with it.
_PAIR_KEYS_MAX: Final = 16_384


class RowSink(Protocol):
    def add(self, pair: PairKey, tail: Tail) -> None: ...


class RejectSink(Protocol):
    def add_rejected(self, row: RejectedRow) -> None: ...


class MessageWatch:
    """The rooms a check is waiting on: the ingest marks each one a message arrives for (one
    dict look-up per message, and only a check's few rooms are ever in it)."""

    def __init__(self) -> None:
        self.rooms: dict[str, bool] = {}

    def start(self, rooms: Iterable[str]) -> None:
        for room in rooms:
            self.rooms[room] = False

    def seen(self, room: str) -> bool:
        return self.rooms.get(room, False)

    def end(self, rooms: Iterable[str]) -> None:
        for room in rooms:
            self.rooms.pop(room, None)


class Ingest:
    def __init__(
        self,
        subscriptions: Subscriptions,
        rows: RowSink,
        rejects: RejectSink,
        *,
        max_frame_bytes: int,
        rejected_frame_chars: int,
        watch: MessageWatch | None = None,
        epoch_for: Callable[[str], str | None] | None = None,
    ) -> None:
        self._subscriptions = subscriptions
        self._rows = rows
        self._rejects = rejects
        self._max_frame_bytes = max_frame_bytes
        self._rejected_frame_chars = rejected_frame_chars
        self._stamps = Stamps()
        # A token room's pair key (records.py), made once: the same bytes object for every row
        # of the room, so its hash is computed once, not at each row's COPY.
        self._pair_keys: dict[str, PairKey] = {}
        self._watched = (watch or MessageWatch()).rooms
        # The epoch of a room's shard while its lease is trusted, else None: the frame is then
        # refused (fenced). Not given: no shards, every row stored without an epoch.
        self._epoch_for = epoch_for
        self.messages = 0
        self.fenced = 0
        self.acks = 0
        self.rejected: Counter[str] = Counter()

    def text(self, data: str) -> bool:
        """Handle one text frame; True when it was a ping that needs a pong."""
        # A character is at least one UTF-8 byte, and exactly one for ASCII (an O(1) check):
        # only a long non-ASCII frame is ever encoded to be measured.
        if len(data) > self._max_frame_bytes or (
            not data.isascii() and _utf8_size(data) > self._max_frame_bytes
        ):
            size = _utf8_size(data)
            too_large = Rejected("too_large", f"{size} bytes, over {self._max_frame_bytes}")
            self._reject(too_large, data, size)
            return False
        frame = parse_frame(data)
        if isinstance(frame, BalanceUpdate):
            self._balance(frame, data)
        elif isinstance(frame, Joined):
            self.acks += 1
            self._subscriptions.joined(frame.room)
        elif isinstance(frame, Ping):
            return True
        else:
            self._reject(frame, data, _utf8_size(data))
        return False

    def binary(self, data: bytes) -> None:
        """The Datastream speaks text only: a binary frame is kept as its Python repr."""
        rejected = Rejected("binary_frame", f"{len(data)} bytes")
        self._reject(rejected, repr(data), len(data))

    def _balance(self, update: BalanceUpdate, data: str) -> None:
        room = update.room
        epoch = None if self._epoch_for is None else self._epoch_for(room)
        # With an epoch (its shard's lease trusted) the row is stored whatever is_held says, as
        # it always was: is_held is asked only of a room without one (a call a message saved).
        if epoch is None:
            if not self._subscriptions.is_held(room):
                not_joined = Rejected("room_not_joined", "no join was sent for this room", room)
                self._reject(not_joined, data, _utf8_size(data))
                return
            if self._epoch_for is not None:
                # Received after this replica stopped trusting the shard's lease: another one
                # holds the room by now, or will, and stores what it receives.
                self.fenced += 1
                return
        self.messages += 1
        pair = None if update.wallet_room else self._pair_keys.get(room)
        if pair is None:
            pair = self._pair_key(update)
        self._rows.add(pair, self._stamps.tail(update.amount, epoch))
        self._subscriptions.delivered(room)
        if room in self._watched:
            self._watched[room] = True

    def _pair_key(self, update: BalanceUpdate) -> PairKey:
        """The key of the update's pair, kept if its room is a token's (a wallet's room has a
        pair per token)."""
        pair = f"{update.wallet}\t{update.token}".encode()
        if not update.wallet_room:
            if len(self._pair_keys) >= _PAIR_KEYS_MAX:
                self._pair_keys.clear()
            self._pair_keys[update.room] = pair
        return pair

    def _reject(self, rejected: Rejected, frame: str, size: int) -> None:
        received_at = datetime.now(UTC)
        limit = self._rejected_frame_chars
        stored = _storable(frame, limit)
        detail = _storable(rejected.detail, limit)
        room = None if rejected.room is None else _storable(rejected.room, limit)
        self.rejected[rejected.reason] += 1
        self._rejects.add_rejected((received_at, rejected.reason, detail, room, stored, size))
        log.warning(
            "ingest.frame_rejected",
            reason=rejected.reason,
            detail=detail[:_SAMPLE_CHARS],
            room=None if room is None else room[:_SAMPLE_CHARS],
            frame=stored[:_SAMPLE_CHARS],
            frame_size=size,
        )
        if rejected.reason == "unknown_type" and rejected.room:
            self._subscriptions.room_error(rejected.room, f"server said: {stored[:_SAMPLE_CHARS]}")


def _utf8_size(text: str) -> int:
    """The size of a text frame on the wire."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _storable(text: str, limit: int) -> str:
    """`text` as it may be stored and shown: every secret scrubbed (before cutting, so no part
    of one survives), at most `limit` characters, and nothing a Postgres `text` refuses (NUL,
    a lone surrogate) left in it: such a row would fail the whole batch it is written with."""
    text = logs.scrubber.scrub(text)[:limit]
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text[:limit]
