"""The admin app in a real browser: signing in, forms with errors, lists, workflow buttons, field
security, edit conflicts and the language switch, as a user sees them.

Selectors are what a user relies on too: labels, roles, button texts, plus the ``data-field``
attributes the templates document. Other tests may change records of the shared server, so each
test works on records no other test touches.
"""

from __future__ import annotations

import re
import uuid
from decimal import Decimal

import pytest

from loomcrm.generators.admin.messages import translator

try:
    from playwright.sync_api import expect
except ImportError:  # conftest.py skips these tests, with the reason
    expect = None

pytestmark = pytest.mark.xdist_group("browser")

EN = translator("en")


def table(page) -> list[dict[str, str]]:
    """The records table as a list of rows, each ``{column header: cell text}``; sort arrows and
    other header decorations are stripped from the keys."""
    grid = page.get_by_role("table").first.evaluate(
        "t => [...t.rows].map(r => [...r.cells].map(c => c.innerText.trim()))")
    headers = [re.sub(r"\s*[▲▼]$", "", h).strip() for h in grid[0]]
    return [dict(zip(headers, cells, strict=False)) for cells in grid[1:]]


def amount(text: str) -> Decimal | None:
    digits = re.sub(r"[^0-9.\-]", "", text)
    return Decimal(digits) if digits else None


def field(page, name: str):
    """A field of a form or record page, by its documented ``data-field`` attribute."""
    return page.locator(f'[data-field="{name}"]')


def test_sign_in_and_a_wrong_password_shows_the_error(open_page, base_url):
    page = open_page()
    page.goto(f"{base_url}/admin/accounts")
    expect(page).to_have_url(re.compile(r"/admin/login"))  # a visitor is sent to the sign-in page
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_have_text(EN("wrong_login"))
    expect(page.get_by_label("Username")).to_have_value("admin")
    page.get_by_label("Password").fill("loom-demo-2026")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/admin/accounts$"))  # back where the visitor was going
    expect(page.get_by_role("heading", level=1)).to_have_text("Accounts")
    expect(page.get_by_role("button", name=EN("sign_out"), exact=True)).to_be_visible()


def test_form_errors_are_shown_inline_with_the_input_kept_then_the_record_is_created(open_page, base_url):
    page = open_page("admin")
    page.goto(f"{base_url}/admin/accounts/new")
    page.get_by_label("City").fill("Hangzhou")
    page.get_by_label("Employees").fill("-5")
    page.get_by_label("Region").select_option("east")
    page.get_by_role("button", name=EN("save")).click()

    expect(page.get_by_text(EN("fix_errors"))).to_be_visible()
    expect(field(page, "name").get_by_role("alert")).to_have_text("is required")
    expect(field(page, "employees").get_by_role("alert")).to_be_visible()
    expect(field(page, "city").get_by_role("alert")).to_have_count(0)
    expect(page.get_by_label("City")).to_have_value("Hangzhou")
    expect(page.get_by_label("Employees")).to_have_value("-5")
    expect(page.get_by_label("Region")).to_have_value("east")

    name = f"Browser Test Ltd {uuid.uuid4().hex[:6]}"
    page.get_by_label(re.compile(r"^Name\b")).fill(name)
    page.get_by_label("Employees").fill("40")
    page.get_by_role("button", name=EN("save")).click()

    expect(page).to_have_url(re.compile(r"/admin/accounts/\d+$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(name)
    expect(field(page, "city")).to_contain_text("Hangzhou")
    expect(field(page, "region")).to_contain_text("East China")
    expect(field(page, "employees")).to_contain_text("40")


def test_list_sorts_by_a_clicked_column_header_and_keeps_the_filter(open_page, base_url):
    page = open_page("admin")
    page.goto(f"{base_url}/admin/opportunities")
    counted = page.get_by_text(re.compile(rf"^\d+ {EN('records')}$"))
    unfiltered = counted.inner_text()
    filters = page.get_by_role("search", name=EN("filter"))
    stage = filters.get_by_label("Stage", exact=True)
    if not stage.is_visible():  # not one of the primary filters: under "More filters"
        filters.get_by_text(EN("more_filters")).click()
    stage.select_option("won")
    filters.get_by_role("button", name=EN("filter"), exact=True).click()

    expect(page).to_have_url(re.compile(r"filter%5Bstage%5D%5Beq%5D=won|filter\[stage\]\[eq\]=won"))
    expect(counted).not_to_have_text(unfiltered)  # the records were swapped in
    rows = table(page)
    assert rows, "no won opportunities in the seed data"
    assert {row["Stage"] for row in rows} == {"Won"}
    expect(counted).to_have_text(f"{len(rows)} {EN('records')}")  # one page: the seed has fewer than 50

    page.get_by_role("columnheader", name="Amount").get_by_role("link").click()
    expect(page.get_by_role("columnheader", name="Amount")).to_have_attribute("aria-sort", "ascending")
    ascending = table(page)
    assert {row["Stage"] for row in ascending} == {"Won"}, "sorting dropped the filter"
    values = [amount(row["Amount"]) for row in ascending]
    assert len(values) == len(rows) and None not in values
    assert values == sorted(values) and values[0] < values[-1]

    page.get_by_role("columnheader", name="Amount").get_by_role("link").click()
    expect(page.get_by_role("columnheader", name="Amount")).to_have_attribute("aria-sort", "descending")
    descending = [amount(row["Amount"]) for row in table(page)]
    assert descending == sorted(values, reverse=True)

    page.get_by_role("columnheader", name="Expected close").get_by_role("link").click()
    expect(page.get_by_role("columnheader", name="Expected close")).to_have_attribute("aria-sort", "ascending")
    dates = [row["Expected close"] for row in table(page)]
    assert dates == sorted(dates) and len(dates) == len(rows)


def test_workflow_button_moves_the_record_and_the_history_shows_it(open_page, base_url):
    page = open_page("admin")
    page.goto(f"{base_url}/admin/opportunities?filter[stage][eq]=proposal&sort=name")
    # The sixth row (1 is the header): a record no other test touches.
    page.get_by_role("table").get_by_role("row").nth(6).get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(r"/admin/opportunities/\d+$"))
    expect(field(page, "stage")).to_contain_text("Proposal")
    history = page.locator("section", has=page.get_by_role("heading", name=EN("history"), exact=True))
    timeline = history.get_by_role("listitem").filter(has=page.locator("time"))  # entries, not their details
    entries = timeline.count()

    page.get_by_role("button", name="Negotiate", exact=True).click()

    expect(page).to_have_url(re.compile(r"/admin/opportunities/\d+$"))
    expect(field(page, "stage")).to_contain_text("Negotiation")
    expect(field(page, "probability")).to_contain_text("75")
    expect(timeline).to_have_count(entries + 1)
    expect(timeline.first).to_contain_text(EN("transition"))
    expect(timeline.first).to_contain_text(re.compile("negotiat", re.IGNORECASE))
    expect(timeline.first).to_contain_text("Ada Admin")  # who did it, by name
    # From negotiation the pipeline offers other moves, not Negotiate again.
    expect(page.get_by_role("button", name="Negotiate", exact=True, disabled=False)).to_have_count(0)
    expect(page.get_by_role("button", name="Mark won")).to_be_visible()


def test_a_hidden_field_is_absent_for_a_restricted_role_and_present_for_admin(open_page, base_url):
    admin = open_page("admin")
    admin.goto(f"{base_url}/admin/contacts/7")
    expect(field(admin, "phone")).to_be_visible()
    phone = field(admin, "phone").locator("dd").inner_text().strip()
    assert phone.startswith("+"), f"contact 7 has no phone in the seed data: {phone!r}"
    expect(admin.get_by_text("Office phone")).not_to_have_count(0)

    finance = open_page("wang.finance")
    finance.goto(f"{base_url}/admin/contacts/7")
    expect(finance.get_by_role("heading", level=1)).to_be_visible()
    expect(field(finance, "last_name")).to_be_visible()
    expect(field(finance, "phone")).to_have_count(0)
    expect(field(finance, "mobile")).to_have_count(0)
    text = finance.locator("body").inner_text()
    assert phone not in text
    assert "Office phone" not in text, "the label of a hidden field is on the page"
    assert "Mobile" not in text

    finance.goto(f"{base_url}/admin/contacts")  # nor as a list column
    assert "Office phone" not in finance.locator("body").inner_text()


def test_saving_a_record_someone_else_changed_shows_the_conflict_and_keeps_the_input(open_page, base_url):
    first, second = open_page("admin"), open_page("li.manager")
    record = f"{base_url}/admin/accounts/13/edit"  # zhang.rep's east-China account: li.manager manages the team
    first.goto(record)
    second.goto(record)
    expect(second.get_by_role("button", name=EN("save"))).to_be_visible()

    first.get_by_label("City").fill("Suzhou")
    first.get_by_role("button", name=EN("save")).click()
    expect(first).to_have_url(re.compile(r"/admin/accounts/13$"))
    expect(field(first, "city")).to_contain_text("Suzhou")

    second.get_by_label("City").fill("Ningbo")
    second.get_by_label("Employees").fill("321")
    second.get_by_role("button", name=EN("save")).click()
    expect(second.get_by_role("alert").filter(has_text=EN("conflict"))).to_be_visible()
    expect(second.locator('[data-theirs="city"]')).to_contain_text("Suzhou")
    expect(second.get_by_label("City")).to_have_value("Ningbo")
    expect(second.get_by_label("Employees")).to_have_value("321")

    second.get_by_role("button", name=EN("save")).click()  # saving again overwrites, knowingly
    expect(second).to_have_url(re.compile(r"/admin/accounts/13$"))
    expect(field(second, "city")).to_contain_text("Ningbo")


def test_the_language_switch_shows_chinese_labels(open_page, base_url, sign_in):
    page = open_page("zhang.rep")  # the choice is stored on the user: no other test signs in as zhang.rep
    page.goto(f"{base_url}/admin/accounts")
    expect(page.get_by_role("heading", level=1)).to_have_text("Accounts")
    page.get_by_label("Language").select_option("zh")

    expect(page.get_by_role("heading", level=1)).to_have_text("客户")  # the config's zh plural_label
    expect(page).to_have_url(re.compile(r"/admin/accounts$"))
    expect(page.get_by_role("columnheader", name="名称")).to_be_visible()
    expect(page.locator("html")).to_have_attribute("lang", "zh")
    page.get_by_role("link", name="新建").click()
    expect(page.get_by_role("button", name="保存")).to_be_visible()
    expect(page.get_by_label("城市")).to_be_visible()

    # It follows the user to a new sign-in, without the cookie.
    other = open_page()
    sign_in(other, base_url, "zhang.rep")
    other.goto(f"{base_url}/admin/opportunities")
    expect(other.get_by_role("heading", level=1)).to_have_text("商机")


def test_select_all_ticks_every_row_and_a_narrow_screen_keeps_the_page_usable(open_page, base_url):
    page = open_page("admin")
    page.goto(f"{base_url}/admin/activities")
    boxes = page.locator('tbody input[type="checkbox"][name="ids"]')
    assert boxes.count() > 1
    page.get_by_label(EN("select_all")).check()
    for i in range(boxes.count()):
        expect(boxes.nth(i)).to_be_checked()
    page.get_by_label(EN("select_all")).uncheck()
    expect(boxes.first).not_to_be_checked()
    page.set_viewport_size({"width": 360, "height": 740})  # a phone: nothing wider than the screen
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the page is {width} px wide at 360 px"
