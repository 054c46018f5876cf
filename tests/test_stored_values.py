"""Values as the library reads them back from PostgreSQL: the types callers rely on."""

from __future__ import annotations

import uuid


def test_uuids_read_back_are_uuid_objects_equal_to_what_was_stored(database):
    stored = [uuid.uuid4() for _ in range(3)]
    with database.autocommit() as cursor:
        cursor.execute(
            "select %(one)s::uuid, %(many)s::uuid[], null::uuid, array[null]::uuid[]",
            {"one": str(stored[0]).upper(), "many": [str(value) for value in stored]},
        )
        one, many, none, array_of_none = cursor.fetchone()
    assert type(one) is uuid.UUID and one == stored[0] and hash(one) == hash(stored[0])
    assert str(one) == str(stored[0]) and one.version == 4
    assert many == stored and all(type(value) is uuid.UUID for value in many)
    assert none is None and array_of_none == [None]
    assert {one: "found"}[stored[0]] == "found"  # a dict keyed by either finds the other
