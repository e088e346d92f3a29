"""The admin list: a filter bar built from the field types, sorting, keyset pages, saved views per user
and bulk actions, over HTTP (the pages a browser gets), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from litestar.testing import TestClient

from loomcrm.engine.identity import Users
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import api_token, make_loom, project_files

PASSWORD = "a long password for list tests"
CRM = """
entities:
  company:
    plural: companies
    title: name
    fields:
      name: {type: string, required: true}
  deal:
    plural: deals
    title: title
    list: [title, company, amount, stage, secret]
    fields:
      title: {type: string, required: true}
      company: {type: ref, to: company}
      amount: {type: money, currency: EUR}
      stage: {type: enum, options: [open, won, lost], default: open}
      closes: {type: date}
      hot: {type: boolean, default: false}
      tags: {type: multi_enum, options: [vip, new]}
      secret: {type: string}

workflows:
  pipeline:
    entity: deal
    field: stage
    transitions:
      win: {from: open, to: won, label: {en: Mark won}}
      lose: {from: open, to: lost, roles: [manager]}

roles:
  rep:
    entities:
      company: {read: all}
      deal: {read: all, create: true, update: all}
    fields:
      deal.secret: hidden
  manager:
    entities:
      user: {read: all}
      company: {read: all, create: true, update: all, delete: all}
      deal: {read: all, create: true, update: all, delete: all}
"""


@pytest.fixture
def crm(db_url):
    loom = make_loom(project_files(CRM), db_url)
    users = Users(loom, channel="python")
    users.create("rita", PASSWORD, roles=["rep"])
    users.create("max", PASSWORD, roles=["manager"])
    users.create("mia", PASSWORD, roles=["manager"])
    companies = [loom.records.create(loom.entity("company"), {"name": n}, Context())["id"]
                 for n in ("Northwind", "Contoso", "Fabrikam")]
    deal = loom.entity("deal")
    for i in range(30):
        loom.records.create(deal, {
            "title": f"Deal {i:02d}", "company": companies[i % 3], "amount": str(100 * (i % 7) + 50),
            "closes": f"2026-0{1 + i % 6}-1{i % 10}", "hot": i % 4 == 0, "tags": ["vip"] if i % 5 == 0 else [],
            "secret": f"s{i}"}, Context())
    yield loom
    loom.close()


@pytest.fixture
def client(crm):
    with TestClient(crm.asgi()) as test_client:
        yield test_client


def sign_in(client: TestClient, username: str) -> None:
    client.cookies.clear()
    response = client.post("/admin/login", data={"username": username, "password": PASSWORD, "_next": "/admin/"},
                           follow_redirects=False)
    assert response.status_code == 303, response.text


def csrf(page: str) -> str:
    return re.search(r'name="_csrf" value="([0-9a-f]+)"', page).group(1)


def row_ids(page: str) -> list[int]:
    """The records a list page shows, in order (the checkbox of each row, else the link of its title)."""
    body = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in page else ""
    return [int(i) for i in re.findall(r'<td><a href="/admin/deals/(\d+)">', body)]


def api_ids(crm, client: TestClient, query: list[tuple[str, str]]) -> list[int]:
    token = api_token(crm, "api-reader")
    response = client.get("/api/deals?" + urlencode([*query, ("limit", "500")]),
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["data"]]


def test_a_filter_narrows_the_rows_exactly_as_the_api_does(crm, client):
    sign_in(client, "max")
    query = [("filter[stage][eq]", "open"), ("filter[amount][gte]", "200"), ("filter[amount][lte]", "450"),
             ("filter[closes][gte]", "2026-02-01"), ("filter[hot][eq]", "false"), ("filter[title][contains]", "deal 1")]
    page = client.get("/admin/deals?" + urlencode(query))
    assert page.status_code == 200, page.text
    expected = api_ids(crm, client, [*query, ("sort", "id")])
    assert expected and len(expected) < 30
    assert sorted(row_ids(page.text)) == sorted(expected)
    assert f"<strong>{len(expected)}</strong>" in page.text  # the total
    # the bar shows what is applied: inputs keep their values, chips say it in words, Clear drops it all
    assert 'name="filter[amount][gte]" type="number" value="200"' in page.text
    assert "Stage = open" in page.text and "Amount from 200" in page.text
    assert '<a class="button" href="/admin/deals">Clear</a>' in page.text


def test_the_filter_bar_offers_an_input_per_field_type(crm, client):
    sign_in(client, "max")
    page = client.get("/admin/deals").text
    assert re.search(r'<select id="flt-stage" name="filter\[stage\]\[eq\]">', page)
    assert re.search(r'<select id="flt-tags" name="filter\[tags\]\[contains\]">', page)
    assert 'name="filter[closes][gte]" type="date"' in page and 'name="filter[closes][lte]" type="date"' in page
    assert 'name="filter[title][contains]" type="text"' in page
    assert re.search(r'<select id="flt-hot" name="filter\[hot\]\[eq\]">\s*<option value="">any</option>\s*'
                     r'<option value="true">Yes</option><option value="false">No</option>', page)
    # few companies: a select of them by name; the owner (a user id): a select of the users
    assert re.search(r'<select id="flt-company" name="filter\[company\]\[eq\]">.*?>Contoso</option>', page, re.S)
    assert re.search(r'<select id="flt-owner" name="filter\[owner\]\[eq\]">.*?>max</option>', page, re.S)
    sign_in(client, "rita")  # a rep may not read users: the owner is an id, without a lookup
    page = client.get("/admin/deals").text
    assert 'name="filter[owner][eq]" type="text"' in page and "/admin/users/lookup" not in page
    assert "<option" not in client.get("/admin/users/lookup?q=ma").text  # nothing to look up for her
    by_tags = client.get("/admin/deals?filter[tags][contains]=vip")
    assert sorted(row_ids(by_tags.text)) == sorted(api_ids(crm, client, [("filter[tags][contains]", "vip")]))


def test_a_ref_filter_with_many_targets_is_an_id_input_with_a_lookup(crm, client):
    companies = crm.entity("company")
    for i in range(60):
        crm.records.create(companies, {"name": f"Other {i}"}, Context())
    sign_in(client, "max")
    page = client.get("/admin/deals").text
    assert 'name="filter[company][eq]" type="text" value=""' in page
    assert 'hx-get="/admin/companies/lookup"' in page
    found = client.get("/admin/companies/lookup?q=contos")
    assert found.status_code == 200
    assert re.fullmatch(r'<option value="Contoso #\d+"></option>', found.text)
    picked = re.search(r'<option value="(Northwind #(\d+))"', client.get("/admin/companies/lookup?q=North").text)
    # the lookup's option ("<title> #<id>") filters by the id, as typing the id does
    filtered = client.get("/admin/deals?" + urlencode({"filter[company][eq]": picked.group(1)}))
    expected = api_ids(crm, client, [("filter[company][eq]", picked.group(2))])
    assert expected and sorted(row_ids(filtered.text)) == sorted(expected)
    assert f'value="#{picked.group(2)}"' in filtered.text and f"Company = #{picked.group(2)}" in filtered.text
    assert sorted(row_ids(client.get(f"/admin/deals?filter[company][eq]={picked.group(2)}").text)) == sorted(expected)


def test_headers_sort_and_keep_the_filters_without_the_cursor(crm, client):
    sign_in(client, "max")
    page = client.get("/admin/deals?filter[stage][eq]=open&sort=-amount").text
    ids = row_ids(page)
    assert ids == api_ids(crm, client, [("filter[stage][eq]", "open"), ("sort", "-amount")])[:len(ids)]
    # the amount header now sorts ascending, with the same filter and no page
    assert 'href="/admin/deals?filter%5Bstage%5D%5Beq%5D=open&amp;sort=amount"' in page
    second = client.get("/admin/deals?filter[stage][eq]=open&sort=-amount&limit=5")
    cursor = re.search(r'rel="next" href="[^"]*cursor=([^"&]+)"', second.text).group(1)
    paged = client.get(f"/admin/deals?filter[stage][eq]=open&sort=-amount&limit=5&cursor={cursor}").text
    assert "cursor" not in re.search(r'<th scope="col" aria-sort="descending"[^>]*><a href="([^"]*)"', paged).group(1)
    # the filter form carries the sort, so filtering keeps the order
    assert '<input type="hidden" name="sort" id="filter-sort" value="-amount">' in page


def test_paging_has_no_duplicates_or_gaps(crm, client):
    sign_in(client, "max")
    seen: list[int] = []
    url = "/admin/deals?sort=amount&limit=7"
    for _ in range(10):
        page = client.get(url)
        assert page.status_code == 200
        seen += row_ids(page.text)
        found = re.search(r'<a rel="next" href="([^"]+)"', page.text)
        if not found:
            break
        url = found.group(1).replace("&amp;", "&")
        assert "First page" in client.get(url).text
    assert len(seen) == len(set(seen)) == 30
    assert seen == api_ids(crm, client, [("sort", "amount")])


def test_an_htmx_request_gets_only_the_table(client):
    sign_in(client, "max")
    page = client.get("/admin/deals?filter[stage][eq]=open&sort=title",
                      headers={"HX-Request": "true", "HX-Target": "records"})
    assert page.status_code == 200
    assert page.text.lstrip().startswith('<div id="records"') and "<html" not in page.text
    assert 'id="filter-sort" value="title" hx-swap-oob="true"' in page.text  # the filter form keeps the order
    bad = client.get("/admin/deals?filter[amount][gte]=lots", headers={"HX-Request": "true", "HX-Target": "records"})
    assert bad.status_code == 200 and "amount must be a number" in bad.text  # htmx swaps 2xx answers only


def test_a_bad_filter_value_is_shown_inline_with_status_400(client):
    sign_in(client, "max")
    page = client.get("/admin/deals?filter[amount][gte]=lots&filter[closes][lte]=someday")
    assert page.status_code == 400
    assert re.search(r'<div class="filter invalid" data-filter="amount">', page.text)
    assert re.search(r'<p class="error" role="alert">amount must be a number', page.text)
    assert "closes must be a date" in page.text
    assert 'value="lots"' in page.text  # what was typed stays, to be corrected
    assert "<tbody>" not in page.text
    unknown = client.get("/admin/deals?filter[nope][eq]=1")
    assert unknown.status_code == 400 and "has no field &#39;nope&#39;" in unknown.text


def test_hidden_fields_are_absent_from_the_filter_bar_and_columns(client):
    sign_in(client, "rita")
    page = client.get("/admin/deals")
    assert page.status_code == 200
    assert "secret" not in page.text.lower()
    sign_in(client, "max")
    assert 'data-filter="secret"' in client.get("/admin/deals").text
    sign_in(client, "rita")
    assert client.get("/admin/deals?filter[secret][contains]=s1").status_code == 403


def test_a_saved_view_belongs_to_one_user(crm, client):
    sign_in(client, "max")
    page = client.get("/admin/deals?filter[stage][eq]=open&sort=-amount&cursor=x").text
    saved = client.post("/admin/deals/views", data={
        "_csrf": csrf(page), "name": "Big open deals", "_query": "filter[stage][eq]=open&sort=-amount&cursor=x"},
        follow_redirects=False)
    assert saved.status_code == 303
    assert saved.headers["location"] == "/admin/deals?filter%5Bstage%5D%5Beq%5D=open&sort=-amount"
    listed = client.get("/admin/deals").text
    link = re.search(r'<a href="(/admin/deals\?[^"]+)">Big open deals</a>', listed)
    assert link and "cursor" not in link.group(1)
    opened = client.get(link.group(1).replace("&amp;", "&")).text
    assert 'aria-current="true">Big open deals' in opened
    assert row_ids(opened) == api_ids(crm, client, [("filter[stage][eq]", "open"), ("sort", "-amount")])[:50]
    view_id = re.search(r'/admin/deals/views/(\d+)/delete', listed).group(1)

    sign_in(client, "mia")
    other = client.get("/admin/deals").text
    assert "Big open deals" not in other
    refused = client.post(f"/admin/deals/views/{view_id}/delete", data={"_csrf": csrf(other)},
                          follow_redirects=False)
    assert refused.status_code == 404

    sign_in(client, "max")
    page = client.get("/admin/deals").text
    assert "Big open deals" in page
    deleted = client.post(f"/admin/deals/views/{view_id}/delete", data={"_csrf": csrf(page)}, follow_redirects=False)
    assert deleted.status_code == 303
    assert "Big open deals" not in client.get("/admin/deals").text


def test_bulk_delete_reports_what_was_done_and_why_not(crm, client):
    sign_in(client, "max")
    page = client.get("/admin/deals?sort=id&limit=5").text
    assert '<option value="delete">Delete</option>' in page
    picks = re.findall(r'name="ids" value="(\d+:\d+)"', page)
    stale_id = int(picks[2].split(":")[0])
    crm.records.update(crm.entity("deal"), stale_id, {"title": "Changed meanwhile"}, Context())
    done = client.post("/admin/deals/bulk", data={"_csrf": csrf(page), "action": "delete", "ids": picks[:3],
                                                  "_query": "sort=id&limit=5"})
    assert done.status_code == 200, done.text
    assert "Delete: 2 done. 1 not done:" in done.text
    assert f'<a href="/admin/deals/{stale_id}">#{stale_id}</a>: ' in done.text
    nothing = client.post("/admin/deals/bulk", data={"_csrf": csrf(page), "action": "delete", "_query": "sort=id"})
    assert nothing.status_code == 200 and "Select at least one record first." in nothing.text
    remaining = set(api_ids(crm, client, []))
    gone = {int(p.split(":")[0]) for p in picks[:2]}
    assert not gone & remaining and stale_id in remaining and len(remaining) == 28


def test_select_all_applies_to_the_page_and_transitions_fire_on_each(crm, client):
    sign_in(client, "max")
    query = "filter[stage][eq]=open&sort=id&limit=4"
    page = client.get("/admin/deals?" + query).text
    assert '<option value="transition:win">Mark won</option>' in page
    on_page = re.findall(r'name="_page" value="(\d+:\d+)"', page)
    fired = client.post("/admin/deals/bulk", data={"_csrf": csrf(page), "action": "transition:win", "_all": "1",
                                                   "_page": on_page, "_query": query})
    assert fired.status_code == 200 and "4 done." in fired.text
    won = api_ids(crm, client, [("filter[stage][eq]", "won")])
    assert sorted(won) == sorted(int(p.split(":")[0]) for p in on_page)


def test_bulk_actions_follow_the_roles(crm, client):
    sign_in(client, "rita")
    page = client.get("/admin/deals").text
    assert 'value="delete"' not in page  # a rep may not delete deals
    assert 'value="transition:win"' in page and 'value="transition:lose"' not in page  # lose: managers only
    first = re.search(r'name="ids" value="(\d+:\d+)"', page).group(1)
    forged = client.post("/admin/deals/bulk", data={"_csrf": csrf(page), "action": "delete", "ids": [first]})
    assert forged.status_code == 403
    lose = client.post("/admin/deals/bulk", data={"_csrf": csrf(page), "action": "transition:lose", "ids": [first]})
    assert lose.status_code == 403
    assert int(first.split(":")[0]) in api_ids(crm, client, [("filter[stage][eq]", "open")])


def test_posts_without_the_csrf_token_are_refused(crm, client):
    sign_in(client, "max")
    page = client.get("/admin/deals").text
    first = re.search(r'name="ids" value="(\d+:\d+)"', page).group(1)
    assert client.post("/admin/deals/bulk", data={"action": "delete", "ids": [first]}).status_code == 403
    assert client.post("/admin/deals/bulk", data={"_csrf": "0" * 64, "action": "delete",
                                                  "ids": [first]}).status_code == 403
    assert client.post("/admin/deals/views", data={"name": "x", "_query": ""}).status_code == 403
    assert len(api_ids(crm, client, [])) == 30
    assert "x</a>" not in client.get("/admin/deals").text
