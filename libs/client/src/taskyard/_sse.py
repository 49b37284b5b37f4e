"""A minimal Server-Sent Events decoder (the subset of the WHATWG spec the log stream needs)."""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its `event` name ("message" when unnamed), joined `data`, and `id`."""

    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Feed it lines (without line terminators); it returns an event at each blank line."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._has_fields = False

    def feed(self, line: str) -> SSEEvent | None:
        """Consume one line; the completed event when `line` is blank, else None."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment, used as keep-alive
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        else:  # "retry" and unknown fields: nothing we act on
            return None
        self._has_fields = True
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._has_fields:
            return None
        event = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
        self._event, self._data, self._has_fields = "", [], False
        # The spec keeps the last event id across events; so do we.
        return event


def iter_events(lines: Iterable[str]) -> Iterator[SSEEvent]:
    """Decode an iterable of lines into events. An unterminated trailing event is dropped, as the spec says."""
    decoder = SSEDecoder()
    for line in lines:
        event = decoder.feed(line)
        if event is not None:
            yield event
