"""The admin create and edit forms over HTTP: errors beside their inputs with the input kept, rule errors
on their fields (or at the top), the stale-edit page, hidden and read-only fields, datetimes in the
app's time zone."""

from __future__ import annotations

import re

import pytest
from test_record_pages import FILES, PASSWORD, create, section, signed_in, token_of

from loomcrm.engine.identity import Users
from loomcrm.engine.runtime.context import Context
from loomcrm.engine.testing import make_loom


@pytest.fixture
def crm(db_url):
    loom = make_loom(FILES, db_url)
    users = Users(loom)
    loom.test_users = {name: users.create(name, PASSWORD, roles=[role])["id"]
                       for name, role in (("boss", "admin"), ("rep", "rep"), ("other", "rep"))}
    yield loom
    loom.close()


@pytest.fixture
def as_user(crm):
    clients = []

    def sign_in(username: str):
        clients.append(signed_in(crm, username))
        return clients[-1]
    yield sign_in
    for client in clients:
        client.__exit__(None, None, None)


def field_html(html: str, name: str) -> str:
    """The HTML of one field of a form: from its ``data-field`` to the next field's."""
    start = html.index(f'data-field="{name}"')
    ends = [i for i in (html.find("data-field=", start + 1), html.find("</fieldset>", start)) if i != -1]
    return html[start:min(ends)]


def stored(crm, entity: str, record_id: int) -> dict:
    return crm.records.get(crm.entity(entity), record_id, Context())


def test_create_with_a_validation_error_keeps_the_input_then_saves_when_fixed(crm, as_user):
    client = as_user("boss")
    form = client.get("/admin/deals/new").text
    assert 'abbr class="req"' in section(form, "data-field", "name")  # required mark
    bad = client.post("/admin/deals/new", data={"_csrf": token_of(form), "name": "", "amount": "12.5",
                                                "lost_reason": "kept text", "start_date": "not a date"})
    assert bad.status_code == 422
    assert 'class="error"' in field_html(bad.text, "name")
    assert 'class="error"' in field_html(bad.text, "start_date")
    assert 'value="12.5"' in section(bad.text, "data-field", "amount")
    assert ">kept text</textarea>" in bad.text
    good = client.post("/admin/deals/new", follow_redirects=False,
                       data={"_csrf": token_of(form), "name": "Fixed", "amount": "12.5", "start_date": "2026-01-05"})
    assert good.status_code == 303, good.text
    record_id = int(good.headers["location"].rsplit("/", 1)[1])
    assert (stored(crm, "deal", record_id)["name"], stored(crm, "deal", record_id)["amount"]) == ("Fixed", "12.50")


def test_a_rule_error_shows_beside_its_field_and_one_without_fields_at_the_top(crm, as_user):
    client = as_user("boss")
    form = client.get("/admin/deals/new").text
    answer = client.post("/admin/deals/new", data={"_csrf": token_of(form), "name": "Backwards",
                                                   "start_date": "2026-05-01", "end_date": "2026-04-01"})
    assert answer.status_code == 422
    assert "The end comes after the start." in field_html(answer.text, "end_date")
    assert "The end comes after the start." not in field_html(answer.text, "start_date")
    big = client.post("/admin/deals/new", data={"_csrf": token_of(form), "name": "Huge", "amount": "2000000"})
    assert big.status_code == 422
    top = big.text[:big.text.index("<form method=\"post\" action=\"/admin/deals/new\"")]
    assert "A deal of a million or more needs an account." in top


def test_a_stale_edit_shows_the_other_change_and_keeps_the_input(crm, as_user):
    deal = create(crm, "deal", name="Original", amount="10.00", lost_reason="unchanged")
    client = as_user("rep")
    form = client.get(f"/admin/deals/{deal['id']}/edit").text
    crm.records.update(crm.entity("deal"), deal["id"], {"amount": "99.00"}, Context(), version=1)
    answer = client.post(f"/admin/deals/{deal['id']}/edit", data={
        "_csrf": token_of(form), "_version": "1", "name": "My new name", "amount": "15.00",
        "lost_reason": "unchanged"})
    assert answer.status_code == 409
    conflict = section(answer.text, "class", "card conflict")
    assert re.search(r'data-theirs="amount">.*CNY 99\.00.*15\.00', conflict, re.S)
    assert 'data-theirs="lost_reason"' not in conflict  # only what the other person changed
    assert 'value="My new name"' in section(answer.text, "data-field", "name")
    assert 'value="15.00"' in section(answer.text, "data-field", "amount")
    assert 'name="_version" value="2"' in answer.text  # saving again overwrites, knowingly
    assert stored(crm, "deal", deal["id"])["name"] == "Original"


def test_a_hidden_field_is_absent_from_the_page_and_form_of_a_restricted_role(crm, as_user):
    account = create(crm, "account", name="Acme", salary_band="Band-Q7-secret")
    crm.records.update(crm.entity("account"), account["id"], {"salary_band": "Band-Z9-secret"}, Context())
    for path in (f"/admin/accounts/{account['id']}", f"/admin/accounts/{account['id']}/edit", "/admin/accounts/new"):
        rep = as_user("rep").get(path)
        assert rep.status_code == 200, (path, rep.text)
        for text in ("salary_band", "Salary band", "Band-Q7", "Band-Z9"):
            assert text not in rep.text, (path, text)
    boss = as_user("boss")
    assert "Band-Z9-secret" in boss.get(f"/admin/accounts/{account['id']}").text
    assert 'name="salary_band" type="text" value="Band-Z9-secret"' in boss.get(
        f"/admin/accounts/{account['id']}/edit").text


def test_a_read_only_field_is_shown_not_editable_and_a_forged_post_is_refused(crm, as_user):
    account = create(crm, "account", name="Acme", rating=3)
    client = as_user("rep")
    form = client.get(f"/admin/accounts/{account['id']}/edit").text
    rating = section(form, "data-field", "rating")
    assert 'class="field readonly"' in form and "<input" not in rating and ">3<" in rating
    forged = client.post(f"/admin/accounts/{account['id']}/edit",
                         data={"_csrf": token_of(form), "_version": "1", "name": "Acme", "rating": "5"})
    assert forged.status_code == 403
    assert "your roles do not allow writing rating" in forged.text
    assert "read-only for your roles" in forged.text
    assert stored(crm, "account", account["id"])["rating"] == 3


def test_a_datetime_is_edited_in_the_apps_time_zone(crm, as_user):
    deal = create(crm, "deal", name="Meet", meeting_at="2026-03-01T01:30:00Z")
    client = as_user("rep")
    form = client.get(f"/admin/deals/{deal['id']}/edit").text
    assert 'type="datetime-local" value="2026-03-01T09:30"' in form  # Asia/Shanghai is UTC+8
    answer = client.post(f"/admin/deals/{deal['id']}/edit", follow_redirects=False,
                         data={"_csrf": token_of(form), "_version": "1", "name": "Meet",
                               "meeting_at": "2026-03-02T10:15"})
    assert answer.status_code == 303, answer.text
    assert stored(crm, "deal", deal["id"])["meeting_at"] == "2026-03-02T02:15:00Z"


def test_a_ref_input_takes_the_chosen_records_title_and_id(crm, as_user):
    account = create(crm, "account", name="Acme 2024")
    client = as_user("rep")
    form = client.get("/admin/deals/new").text
    assert 'hx-get="/admin/deals/lookup?field=account"' in section(form, "data-field", "account")
    made = client.post("/admin/deals/new", follow_redirects=False,
                       data={"_csrf": token_of(form), "name": "D", "account": f"Acme 2024 #{account['id']}"})
    assert made.status_code == 303, made.text
    record_id = int(made.headers["location"].rsplit("/", 1)[1])
    assert stored(crm, "deal", record_id)["account"] == account["id"]
    unpicked = client.post("/admin/deals/new", data={"_csrf": token_of(form), "name": "E", "account": "Acme 2024"})
    assert unpicked.status_code == 422
    assert 'value="Acme 2024"' in field_html(unpicked.text, "account")
    assert 'class="error"' in field_html(unpicked.text, "account")


def test_refs_json_and_multi_select_inputs_round_trip(db_url):
    from loomcrm.engine.testing import project_files

    loom = make_loom(project_files("""
        entities:
          tag: {title: name, fields: {name: {type: string, required: true}}}
          note:
            title: subject
            fields:
              subject: {type: string, required: true}
              tags: {type: refs, to: tag}
              extra: {type: json}
              kinds: {type: multi_enum, options: [call, mail, visit]}
              done: {type: boolean}
    """), db_url)
    try:
        Users(loom).create("solo", PASSWORD)
        red, blue = (loom.records.create(loom.entity("tag"), {"name": n}, Context())["id"] for n in ("Red", "Blue"))
        note = loom.records.create(loom.entity("note"), {"subject": "S", "tags": [red], "extra": {"a": 1},
                                                         "kinds": ["call"], "done": True}, Context())
        client = signed_in(loom, "solo")
        form = client.get(f"/admin/notes/{note['id']}/edit").text
        tags = field_html(form, "tags")
        assert f'name="tags" value="{red}" checked> Red' in tags and "Blue" not in tags
        assert "{&#34;a&#34;: 1}</textarea>" in form or '{"a": 1}</textarea>' in form
        answer = client.post(f"/admin/notes/{note['id']}/edit", follow_redirects=False, data={
            "_csrf": token_of(form), "_version": "1", "subject": "S", "tags__present": "1",
            "tags": [str(red), f"Blue #{blue}"], "extra": '{"b": [2]}', "kinds__present": "1",
            "kinds": ["mail", "visit"], "done__present": "1"})
        assert answer.status_code == 303, re.findall(r'role="alert">(.*?)</', answer.text, re.S)
        saved = loom.records.get(loom.entity("note"), note["id"], Context())
        assert (sorted(saved["tags"]), saved["extra"], saved["kinds"], saved["done"]) == (
            sorted([red, blue]), {"b": [2]}, ["mail", "visit"], False)
        client.__exit__(None, None, None)
    finally:
        loom.close()
