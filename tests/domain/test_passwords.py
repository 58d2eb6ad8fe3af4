"""The bound on concurrent password hashes: N at once, M queued, the rest refused at once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from upak.domain.passwords import PasswordsBusy, fast_passwords_for_tests


async def test_beyond_the_slots_and_the_queue_calls_are_refused_at_once() -> None:
    passwords = fast_passwords_for_tests(max_concurrency=2, max_waiting=1)
    release = threading.Event()
    held = [asyncio.ensure_future(passwords._in_thread(release.wait, 30)) for _ in range(2)]
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(passwords.hash("a queued pass phrase"))
    await asyncio.sleep(0)
    with pytest.raises(PasswordsBusy):
        await asyncio.wait_for(passwords.hash("one too many phrases"), timeout=0.5)
    assert passwords.refused == 1
    release.set()
    await asyncio.wait_for(asyncio.gather(*held), timeout=30)
    assert (await asyncio.wait_for(queued, timeout=30)).startswith("$argon2id$")
    assert await passwords.verify(
        await passwords.hash("a later pass phrase"), "a later pass phrase"
    )


async def test_a_cancelled_caller_keeps_its_slot_until_the_hash_ends() -> None:
    passwords = fast_passwords_for_tests(max_concurrency=1, max_waiting=0)
    release = threading.Event()
    caller = asyncio.ensure_future(passwords._in_thread(release.wait, 30))
    await asyncio.sleep(0.05)
    caller.cancel()  # the client went away; its thread still runs
    await asyncio.sleep(0.05)
    with pytest.raises(PasswordsBusy):
        await passwords.hash("must wait for the thread")
    release.set()
    for _ in range(200):  # the slot comes back when the thread ends
        if not passwords._slots.locked():
            break
        await asyncio.sleep(0.01)
    assert (await passwords.hash("now there is room")).startswith("$argon2id$")
