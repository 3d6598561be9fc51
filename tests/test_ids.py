"""relay.ids: fresh ids in uuid4's forms, unique, and independent of the global `random`."""

from __future__ import annotations

import os
import random
import re
import uuid

from relay import ids


def test_hex_ids_are_version_4_uuids_in_uuid4_hex_form() -> None:
    made = [ids.uuid4_hex() for _ in range(2_000)]
    assert len(set(made)) == len(made)
    assert all(re.fullmatch(r"[0-9a-f]{32}", one) for one in made)
    parsed = [uuid.UUID(hex=one) for one in made]
    assert {(one.version, one.variant) for one in parsed} == {(4, uuid.RFC_4122)}
    assert [one.hex for one in parsed] == made


def test_dashed_ids_are_version_4_uuids_as_str_writes_them() -> None:
    made = [ids.uuid4_str() for _ in range(2_000)]
    assert len(set(made)) == len(made)
    parsed = [uuid.UUID(one) for one in made]
    assert [str(one) for one in parsed] == made
    assert {(one.version, one.variant) for one in parsed} == {(4, uuid.RFC_4122)}


def test_random_bits_spread_over_every_free_position() -> None:
    """Every one of the 122 random bits takes both values: no position stuck by the masking."""
    made = [int(ids.uuid4_hex(), 16) for _ in range(500)]
    fixed = {76, 77, 78, 79, 62, 63}  # the version nibble and the variant bits
    for bit in set(range(128)) - fixed:
        assert {(value >> bit) & 1 for value in made} == {0, 1}, bit


def test_seeding_the_global_random_does_not_repeat_ids() -> None:
    """A program (or a test) that seeds `random` must not make the relay's ids repeat."""
    state = random.getstate()
    try:
        random.seed(1234)
        first = [ids.uuid4_hex() for _ in range(10)]
        random.seed(1234)
        second = [ids.uuid4_hex() for _ in range(10)]
    finally:
        random.setstate(state)
    assert not set(first) & set(second)


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    """Two processes forked from one parent must not share a sequence (the child is reseeded)."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its next ids and leave without running pytest's teardown
        try:
            os.write(writer, " ".join(ids.uuid4_hex() for _ in range(5)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    parent = [ids.uuid4_hex() for _ in range(5)]
    with os.fdopen(reader, "rb") as pipe:
        child = pipe.read().decode().split()
    os.waitpid(pid, 0)
    assert len(child) == 5
    assert not set(child) & set(parent)
