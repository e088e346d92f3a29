"""Keyset pagination: walking the pages while others insert never repeats or skips a record."""

from __future__ import annotations

import pytest

from loomcrm.engine.runtime.context import Context


@pytest.mark.parametrize("sort", ["", "name", "-employees", "region,-founded"])
def test_pages_stay_stable_while_records_are_inserted(crm, client, sort):
    entity = crm.entity("account")
    regions = ["north", "south", "在售", None]
    for i in range(57):
        crm.records.create(entity, {"name": f"n{i % 13:02d}", "employees": (i * 7) % 11 or None,
                                    "region": regions[i % 4], "founded": f"2020-01-{(i % 28) + 1:02d}"}, Context())
    before = {r["id"] for r in crm.records.list(entity, _all(entity), Context())["data"]}
    seen: list[int] = []
    cursor, inserted = None, 0
    while True:
        url = f"/api/accounts?limit=7&sort={sort}" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url).json()
        seen += [r["id"] for r in page["data"]]
        # someone inserts records that sort before, among and after the page we are on
        for name in ("a", "n05", "zzz"):
            crm.records.create(entity, {"name": name, "employees": inserted % 11}, Context())
            inserted += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)), "a record appeared on two pages"
    assert before <= set(seen), "a record that existed before paging was skipped"


def _all(entity):
    from loomcrm.engine.runtime.query import parse_list_params

    return parse_list_params(entity, [("limit", "500")])
