"""An UPDATE's per-column diff (`flowd.history.changes`): what changed, in the table's order."""

from __future__ import annotations

from typing import Any

from flowd.history import ColumnChange, column_changes, column_order


def test_only_columns_whose_value_changed_are_listed() -> None:
    old = {"id": 1, "status": "open", "meta": {"a": 1, "b": [1, 2]}, "done": 1}
    new = {"id": 1, "status": "done", "meta": {"b": [1, 2], "a": 1}, "done": True}
    assert column_changes(old, new) == (
        ColumnChange("status", "open", "done"),
        ColumnChange("done", 1, True),  # a change of type, which Python's `1 == True` hides
    )


def test_a_column_one_side_lacks_is_a_change_that_says_so() -> None:
    # Without REPLICA IDENTITY FULL, Realtime's old row holds the primary key only.
    assert column_changes({"id": 1}, {"id": 1, "title": None}) == (
        ColumnChange("title", None, None, in_old=False),
    )
    assert column_changes({"id": 1, "gone": 2}, {"id": 1}) == (
        ColumnChange("gone", 2, None, in_new=False),
    )
    assert column_changes(None, None) == ()


def test_changes_come_in_the_order_of_the_tables_columns() -> None:
    event: dict[str, Any] = {
        "type": "UPDATE",
        "columns": [{"name": "id"}, {"name": "title"}, {"name": "status"}, "junk"],
        "record": {"status": "done", "title": "b", "id": 1, "extra": 1},
        "old_record": {"status": "open", "title": "a", "id": 1},
    }
    assert column_order(event) == ["id", "title", "status", "extra"]
    changes = column_changes(event["old_record"], event["record"], column_order(event))
    assert [change.column for change in changes] == ["title", "status", "extra"]
    assert column_order({"columns": "not a list"}) == []
