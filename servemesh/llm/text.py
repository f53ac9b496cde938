"""Incremental detokenization and stop strings: pure functions of their inputs, no I/O."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence


class IncrementalDetokenizer:
    """Turns token ids into text as they arrive, never splitting a UTF-8 character.

    Tokens of byte-level vocabularies may end in the middle of a multi-byte character;
    the incomplete bytes are held back until the character is complete."""

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self._token_bytes = token_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_ids: Sequence[int]) -> str:
        return self._decoder.decode(b"".join(self._token_bytes(t) for t in token_ids))

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Finds stop strings in streamed text, even when one spans several chunks.

    ``push`` returns the text that is safe to emit and whether a stop string was hit;
    text that could be the start of a stop string is held back until it is not."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self.stops:
            return text, False
        buf = self._held + text
        hit = -1
        for stop in self.stops:
            i = buf.find(stop)
            if i != -1 and (hit == -1 or i < hit):
                hit = i
        if hit != -1:
            self.stopped = True
            self._held = ""
            return buf[:hit], True
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest end of ``buf`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
