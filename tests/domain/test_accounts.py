"""Accounts on SQLite and PostgreSQL: registration, login, rehash, password change."""

from __future__ import annotations

import asyncio

import pytest
from argon2 import PasswordHasher, Type
from sqlalchemy import select

from upak.domain import accounts
from upak.domain.models import User
from upak.domain.passwords import Passwords

PW1 = "first pass phrase 1"
PW2 = "second pass phrase 2"


async def test_register_normalises_the_email(db, passwords) -> None:
    async with db() as s:
        user = await accounts.register(s, passwords, "  Ann@Example.COM ", PW1)
    assert user.email == "Ann@example.com"
    assert user.password_hash.startswith("$argon2id$")
    assert user.plan is None and user.subscription_expires_at is None


async def test_the_same_email_twice_is_taken_silently(db, passwords) -> None:
    async with db() as s:
        owner = await accounts.register(s, passwords, "bob@example.com", PW1)
    async with db() as s:
        # The whole address is case-folded: `BOB@` is Bob, and his account is unchanged.
        assert await accounts.register(s, passwords, "BOB@EXAMPLE.com", PW2) is None
    async with db() as s:
        user = await accounts.authenticate(s, passwords, "Bob@Example.com", PW1)
        assert user.id == owner.id and user.email == "bob@example.com"
        with pytest.raises(accounts.InvalidCredentials):
            await accounts.authenticate(s, passwords, "bob@example.com", PW2)


async def test_identity_case_folds_the_local_part_and_keeps_the_spelling(db, passwords) -> None:
    async with db() as s:
        alice = await accounts.register(s, passwords, "Alice.Smith@Example.com", PW1)
    assert alice.email == "Alice.Smith@example.com" and alice.email_key == "alice.smith@example.com"
    async with db() as s:
        assert await accounts.register(s, passwords, "alice.smith@example.com", PW2) is None
        assert (await accounts.authenticate(s, passwords, "ALICE.SMITH@example.com", PW1)).id == (
            alice.id
        )


async def test_concurrent_registrations_of_one_email_make_one_account(db, passwords) -> None:
    async def attempt() -> str:
        async with db() as s:
            created = await accounts.register(s, passwords, "race@example.com", PW1)
            return "taken" if created is None else "created"

    results = await asyncio.gather(*(attempt() for _ in range(5)))
    assert results.count("created") == 1
    async with db() as s:
        rows = (await s.execute(select(User).where(User.email == "race@example.com"))).all()
    assert len(rows) == 1


@pytest.mark.parametrize("email", ["", "no-at-sign", "a@", "@b.com", "a b@c.com", "a@b@c"])
async def test_bad_emails_are_refused(db, passwords, email: str) -> None:
    async with db() as s:
        with pytest.raises(ValueError):
            await accounts.register(s, passwords, email, PW1)


@pytest.mark.parametrize("password", ["short", "x" * 1025])
async def test_password_length_is_enforced(db, passwords, password: str) -> None:
    async with db() as s:
        with pytest.raises(ValueError, match="15 to 1024"):
            await accounts.register(s, passwords, "len@example.com", password)


@pytest.mark.parametrize(
    "password",
    ["passwordpassword", "PasswordPassword", "1234567890123456", "qwerty123456789!", "x" * 16],
)
async def test_common_passwords_are_refused(db, passwords, password: str) -> None:
    async with db() as s:
        with pytest.raises(ValueError, match="most common"):
            await accounts.register(s, passwords, "common@example.com", password)
        with pytest.raises(ValueError, match="most common"):
            await accounts.change_password(s, passwords, 1, PW1, password)


def test_the_shipped_list_is_the_full_one() -> None:
    from upak.domain.passwords import common_passwords, is_common

    assert len(common_passwords()) > 19_000  # Django's list, package data (no network)
    assert is_common("qwerty") and is_common("Password1") and not is_common(PW1)


async def test_login_succeeds_with_any_casing_of_the_domain(db, passwords) -> None:
    async with db() as s:
        created = await accounts.register(s, passwords, "cat@example.com", PW1)
    async with db() as s:
        user = await accounts.authenticate(s, passwords, " cat@Example.Com", PW1)
    assert user.id == created.id


class CountingPasswords(Passwords):
    """Counts Argon2 verifications: the proof that a failed login always pays for one."""

    def __init__(self) -> None:
        super().__init__(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID))
        self.verifications = 0

    async def verify(self, password_hash: str, password: str) -> bool:
        self.verifications += 1
        return await super().verify(password_hash, password)


async def test_unknown_email_and_wrong_password_look_the_same(db) -> None:
    passwords = CountingPasswords()
    async with db() as s:
        await accounts.register(s, passwords, "dan@example.com", PW1)
    failures = []
    for email, password in [
        ("dan@example.com", "wrong password"),
        ("nobody@example.com", PW1),
        ("not an email", PW1),
    ]:
        before = passwords.verifications
        async with db() as s:
            with pytest.raises(accounts.InvalidCredentials) as caught:
                await accounts.authenticate(s, passwords, email, password)
        assert passwords.verifications == before + 1  # same Argon2 work either way
        failures.append(str(caught.value))
    assert len(set(failures)) == 1 and failures[0] == accounts.BAD_CREDENTIALS


async def test_login_rehashes_when_parameters_change(db) -> None:
    old = Passwords(PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID))
    new = Passwords(PasswordHasher(time_cost=2, memory_cost=16, parallelism=1, type=Type.ID))
    async with db() as s:
        user = await accounts.register(s, old, "eve@example.com", PW1)
    old_hash = user.password_hash
    assert new.needs_rehash(old_hash)
    async with db() as s:
        await accounts.authenticate(s, new, "eve@example.com", PW1)
    async with db() as s:
        stored = await accounts.get_user(s, user.id)
    assert stored is not None and stored.password_hash != old_hash
    assert not new.needs_rehash(stored.password_hash)
    async with db() as s:  # and the new hash still verifies
        await accounts.authenticate(s, new, "eve@example.com", PW1)


async def test_a_corrupt_stored_hash_is_a_failed_login_not_an_error(db, passwords) -> None:
    async with db() as s:
        user = await accounts.register(s, passwords, "fay@example.com", PW1)
        user.password_hash = "not-a-hash"
        await s.commit()
    async with db() as s:
        with pytest.raises(accounts.InvalidCredentials):
            await accounts.authenticate(s, passwords, "fay@example.com", PW1)


async def test_change_password(db, passwords) -> None:
    async with db() as s:
        user = await accounts.register(s, passwords, "gus@example.com", PW1)
    async with db() as s:
        with pytest.raises(accounts.WrongPassword):
            await accounts.change_password(s, passwords, user.id, "wrong", PW2)
    async with db() as s:
        await accounts.change_password(s, passwords, user.id, PW1, PW2)
    async with db() as s:
        await accounts.authenticate(s, passwords, "gus@example.com", PW2)
        with pytest.raises(accounts.InvalidCredentials):
            await accounts.authenticate(s, passwords, "gus@example.com", PW1)


def test_reprs_hold_no_secrets() -> None:
    user = User(id=1, email="h@example.com", password_hash="$argon2id$secret")
    assert "secret" not in repr(user) and "h@example.com" not in repr(user)
    assert "argon2id" in repr(Passwords())
