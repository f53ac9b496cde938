"""Incremental detokenization and stop strings."""

from __future__ import annotations

import pytest

from servemesh.llm.text import IncrementalDetokenizer, StopMatcher
from servemesh.llm.tokenizer import ByteTokenizer


def stream_text(tokens: list[int]) -> list[str]:
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok.token_bytes)
    out = [detok.push([t]) for t in tokens]
    out.append(detok.flush())
    return out


@pytest.mark.parametrize("text", ["Café", "東京", "😀 ok", "naïve ☃ façade", "ascii only"])
def test_multibyte_characters_split_across_tokens_come_out_whole(text):
    pieces = stream_text(list(text.encode("utf-8")))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # a 4-byte emoji arrives as one piece, only when its last byte does
    if "😀" in text:
        assert "😀" in pieces


def test_tokens_carrying_several_characters_and_partial_ones():
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok.token_bytes)
    data = "aé東".encode()
    assert detok.push(list(data[:2])) == "a"      # 'a' + first byte of 'é'
    assert detok.push(list(data[2:4])) == "é"     # rest of 'é' + first byte of '東'
    assert detok.push(list(data[4:])) == "東"
    assert detok.flush() == ""


def test_an_incomplete_character_at_the_end_is_replaced_not_dropped():
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok.token_bytes)
    assert detok.push(list("€".encode()[:2])) == ""
    assert detok.flush() == "\ufffd"


def feed(stops: list[str], chunks: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out, hit = [], False
    for c in chunks:
        text, hit = m.push(c)
        out.append(text)
        if hit:
            break
    if not hit:
        out.append(m.flush())
    return "".join(out), hit


@pytest.mark.parametrize(("stops", "chunks", "expected"), [
    (["END"], ["abc", "END", "more"], ("abc", True)),
    (["END"], ["ab", "cE", "N", "Dxyz"], ("abc", True)),          # spans three chunks
    (["END"], ["ab", "cE", "N", "x"], ("abcENx", False)),          # a false start is released
    (["\n\n", "###"], ["line\n", "\nnext"], ("line", True)),
    (["###", "#!"], ["a#", "!b"], ("a", True)),                    # the earliest stop wins
    ([], ["free", " text"], ("free text", False)),
    (["stop"], ["no stop here"], ("no ", True)),
    (["é!"], ["caf", "é", "!"], ("caf", True)),
])
def test_stop_strings(stops, chunks, expected):
    assert feed(stops, chunks) == expected


def test_held_back_text_is_only_what_could_still_be_a_stop():
    m = StopMatcher(["<end>"])
    assert m.push("hello <e") == ("hello ", False)
    assert m.push("nd") == ("", False)
    assert m.push("!") == ("<end!", False)
