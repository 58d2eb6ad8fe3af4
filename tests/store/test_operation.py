"""An operation's record: its ARGV derived in one place, and back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import pytest

from upak.store.operation import NO_ARGS, NoArgs, Operation
from upak.store.primitives import CLAIM_ONCE, Expiring


def _unused(data, keys, args):
    raise AssertionError("not run")


def test_a_named_tuple_record_is_its_own_argv() -> None:
    record = Expiring("v", 1000)
    assert CLAIM_ONCE.argv(record) is record
    assert CLAIM_ONCE.record_of(["v", 1000]) == record
    assert CLAIM_ONCE.replay_args(record, 400) == ("v", 600)  # the TTL it has left
    assert CLAIM_ONCE.replay_args(record, 1000) is None  # no time left: not replayed


@dataclass(frozen=True)
class Pair:
    first: str
    second: int


def test_a_dataclass_record_is_read_field_by_field_in_order() -> None:
    op = Operation(name="test_pair", lua="", args=Pair, memory=_unused)
    assert tuple(op.argv(Pair("a", 2))) == ("a", 2)
    assert op.record_of(("a", 2)) == Pair("a", 2)
    empty = Operation(name="test_empty", lua="", args=NoArgs, memory=_unused)
    assert tuple(empty.argv(NO_ARGS)) == () and empty.record_of(()) == NO_ARGS


class _Loose:
    pass


def test_arguments_that_are_not_a_record_are_refused() -> None:
    with pytest.raises(TypeError, match="record"):
        Operation(name="test_loose", lua="", args=_Loose, memory=_unused)


class _Batch(NamedTuple):
    items: tuple[int, ...]


def test_a_batch_encoding_comes_as_a_pair() -> None:
    with pytest.raises(ValueError, match="both"):
        Operation(name="test_half", lua="", args=_Batch, memory=_unused, encode=list)
