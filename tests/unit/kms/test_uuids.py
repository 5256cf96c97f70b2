"""Request and event ids: random version-4 UUIDs, unique, and never shared with a forked child."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor

from keytrail.kms.uuids import UuidSource


def test_ids_are_canonical_version_4_uuids_with_the_rfc_4122_variant() -> None:
    source = UuidSource()
    for _ in range(1000):
        text = source()
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)


def test_ids_stay_unique_across_many_refills_of_the_pool() -> None:
    source = UuidSource()
    ids = [source() for _ in range(20_000)]  # ~80 pools of 4 KiB
    assert len(set(ids)) == len(ids)


def test_every_variant_digit_and_random_digit_occurs() -> None:
    ids = [UuidSource()() for _ in range(2000)]
    assert {text[19] for text in ids} == set("89ab")
    assert {text[14] for text in ids} == {"4"}
    assert {text[0] for text in ids} == set("0123456789abcdef")


def test_a_forked_child_does_not_repeat_the_ids_of_its_parent() -> None:
    source = UuidSource()
    source()  # the pool now holds ids the parent will hand out next
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next id, then leave without running the test runner's cleanup
        os.close(read_end)
        os.write(write_end, source().encode())
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert uuid.UUID(child_id).version == 4
    assert child_id != source()


def test_threads_sharing_one_source_never_get_the_same_id() -> None:
    source = UuidSource()
    with ThreadPoolExecutor(max_workers=8) as pool:
        batches = list(pool.map(lambda _: [source() for _ in range(2000)], range(8)))
    ids = [text for batch in batches for text in batch]
    assert len(set(ids)) == len(ids) == 16_000
