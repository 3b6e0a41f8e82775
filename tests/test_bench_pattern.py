"""The bytes the bench sends and their verification (trio_echo._bench.pattern)."""

from __future__ import annotations

import itertools

import pytest

from trio_echo._bench.pattern import MAX_CHUNK, EchoMismatch, Pattern, Verifier


def stream_of(verifier: Verifier, messages: int) -> bytes:
    return b"".join(bytes(verifier.next_message()) for _ in range(messages))


@pytest.mark.parametrize("size", [1, 2, 64, 1000, 1024, 70_000])
def test_messages_end_in_a_newline_and_consecutive_bytes_differ(size: int) -> None:
    verifier = Verifier(Pattern(size), 0)
    data = stream_of(verifier, 5)
    assert len(data) == 5 * size
    messages = [data[i : i + size] for i in range(0, len(data), size)]
    if size > 1:
        assert all(message.endswith(b"\n") for message in messages)
    assert all(b"\n" not in message[:-1] for message in messages)
    assert all(data[i] != data[i + 1] for i in range(len(data) - 1))
    # A missing message would not go unnoticed: neighbours differ.
    assert all(messages[i] != messages[i + 1] for i in range(len(messages) - 1))


@pytest.mark.parametrize("chunk", [1, 7, 64, MAX_CHUNK])
def test_the_exact_echo_verifies_in_chunks_of_any_size(chunk: int) -> None:
    verifier = Verifier(Pattern(1000), 3)
    data = stream_of(verifier, 200)
    for start in range(0, len(data), chunk):
        verifier.check(memoryview(data)[start : start + chunk])
    assert verifier.received == verifier.sent == len(data)
    assert verifier.outstanding == 0


def test_connections_send_different_streams() -> None:
    pattern = Pattern(64)
    streams = {stream_of(Verifier(pattern, number), 4) for number in range(50)}
    assert len(streams) == 50


def echo_of(data: bytes, verifier: Verifier) -> str:
    with pytest.raises(EchoMismatch) as caught:
        verifier.check(data)
    return str(caught.value)


def test_a_wrong_byte_is_named_by_connection_offset_and_both_bytes() -> None:
    verifier = Verifier(Pattern(64), 2)
    sent = stream_of(verifier, 2)
    verifier.check(sent[:50])
    wrong = sent[50:100] + b"?" + sent[101:]
    line = echo_of(wrong, verifier)
    assert line == (
        f"connection 2: byte 100: expected 0x{sent[100]:02x} ({chr(sent[100])}), received 0x3f (?)"
    )


def test_a_missing_byte_shows_as_the_next_one_at_its_offset() -> None:
    verifier = Verifier(Pattern(64), 0)
    sent = stream_of(verifier, 2)
    line = echo_of(sent[:10] + sent[11:], verifier)
    assert line.startswith("connection 0: byte 10: expected ")
    assert line.endswith(f"received 0x{sent[11]:02x} ({chr(sent[11])})")


def test_an_extra_byte_past_what_was_sent_is_named() -> None:
    verifier = Verifier(Pattern(64), 1)
    sent = stream_of(verifier, 1)
    assert echo_of(sent + b"\x00", verifier) == (
        "connection 1: byte 64: expected no byte (only 64 sent), received 0x00 ('\\x00')"
    )


@pytest.mark.parametrize(("damage", "offset"), [(b"?", 100), (b"", 100)])
def test_a_mismatch_carries_the_offset_and_the_byte_received(damage: bytes, offset: int) -> None:
    verifier = Verifier(Pattern(64), 2)
    sent = stream_of(verifier, 2)
    echo = sent[:100] + damage + sent[101:] + b"\x00" * 2  # wrong, or missing
    with pytest.raises(EchoMismatch) as caught:
        verifier.check(echo)
    assert (caught.value.offset, caught.value.received) == (offset, echo[offset])
    extra = Verifier(Pattern(64), 1)
    with pytest.raises(EchoMismatch) as caught:
        extra.check(stream_of(extra, 1) + b"Z")
    assert (caught.value.offset, caught.value.received) == (64, ord("Z"))


def test_nothing_is_counted_from_a_chunk_that_fails() -> None:
    verifier = Verifier(Pattern(64), 0)
    sent = stream_of(verifier, 1)
    echo_of(b"x" + sent[1:], verifier)
    assert verifier.received == 0


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="size must be at least 1"):
        Pattern(0)


@pytest.mark.parametrize("chunk", [1, 100, 1000, 2500, MAX_CHUNK])
def test_check_returns_the_messages_each_chunk_completes(chunk: int) -> None:
    verifier = Verifier(Pattern(1000), 5)
    data = stream_of(verifier, 70)
    completed = [
        verifier.check(data[start : start + chunk]) for start in range(0, len(data), chunk)
    ]
    assert sum(completed) == 70
    # The count after each chunk is the number of whole messages echoed by then.
    ends = range(chunk, len(data) + chunk, chunk)
    totals = [min(end, len(data)) // 1000 for end in ends]
    assert list(itertools.accumulate(completed)) == totals


def test_the_ring_wraps_without_a_seam() -> None:
    pattern = Pattern(1024)
    ring = pattern.data[: pattern.ring]
    for number in (0, 1, 2, 40):
        verifier = Verifier(pattern, number)
        data = stream_of(verifier, pattern.messages + 3)  # past the ring's end
        start = pattern.start(number)
        assert data == (ring[start:] + ring + ring)[: len(data)]
        for offset in range(0, len(data), 4000):
            verifier.check(data[offset : offset + 4000])
        assert verifier.outstanding == 0


@pytest.mark.parametrize("size", [1, 64, 4096, 4097, 70_000])
def test_the_ready_made_messages_are_the_ring_in_order(size: int) -> None:
    pattern = Pattern(size)
    assert len(pattern.each) == pattern.messages
    assert b"".join(bytes(message) for message in pattern.each) == pattern.data[: pattern.ring]
    # Short messages are copies; long ones share the pattern's memory.
    assert all(isinstance(m, bytes if size <= 4096 else memoryview) for m in pattern.each)
