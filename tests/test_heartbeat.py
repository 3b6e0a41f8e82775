"""Worker heartbeats (``_heartbeat``) over a real pipe, in virtual time.

The supervisor killing a silent worker is ``test_workers.py``'s.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
import trio
import trio.testing

from trio_echo._heartbeat import HEARTBEAT_INTERVAL, send_heartbeats, wait_silent


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    for fd in (read, write):
        with contextlib.suppress(OSError):
            os.close(fd)


async def test_silence_is_noticed_only_after_the_last_beat(
    pipe: tuple[int, int], autojump_clock: trio.testing.MockClock
) -> None:
    read, write = pipe
    async with trio.open_nursery() as nursery:
        # Beats for 5 s, then the worker's loop stops.
        nursery.cancel_scope.deadline = trio.current_time() + 5
        nursery.start_soon(send_heartbeats, write)
    started = trio.current_time()
    await wait_silent(read, 2.0)
    silent_for = trio.current_time() - started
    # The last beat was at most one interval before the writer stopped.
    assert 2.0 - HEARTBEAT_INTERVAL <= silent_for <= 2.0


async def test_beats_keep_the_worker_alive(
    pipe: tuple[int, int], autojump_clock: trio.testing.MockClock
) -> None:
    read, write = pipe
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_heartbeats, write)
        with trio.move_on_after(60) as scope:
            await wait_silent(read, 1.0)
        nursery.cancel_scope.cancel()
    assert scope.cancelled_caught


async def test_sender_stops_when_the_supervisor_is_gone(pipe: tuple[int, int]) -> None:
    read, write = pipe
    os.close(read)
    with trio.fail_after(5):
        await send_heartbeats(write)


async def test_exited_worker_is_not_reported_silent(
    pipe: tuple[int, int], autojump_clock: trio.testing.MockClock
) -> None:
    read, write = pipe
    os.close(write)
    # EOF: the worker is gone, which its exit status reports; wait_silent waits on.
    with trio.move_on_after(60) as scope:
        await wait_silent(read, 1.0)
    assert scope.cancelled_caught


async def test_first_beat_may_take_the_startup_allowance(
    pipe: tuple[int, int], autojump_clock: trio.testing.MockClock
) -> None:
    read, _ = pipe
    started = trio.current_time()
    await wait_silent(read, 1.0, first=30.0)
    assert trio.current_time() - started == pytest.approx(30.0)


async def test_after_the_first_beat_the_timeout_applies(
    pipe: tuple[int, int], autojump_clock: trio.testing.MockClock
) -> None:
    read, write = pipe

    async def one_beat_at_5s() -> None:
        await trio.sleep(5)
        os.write(write, b".")

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one_beat_at_5s)
        await wait_silent(read, 1.0, first=30.0)
    assert trio.current_time() - started == pytest.approx(6.0)
