"""The ``input`` macro of ``admin/_widgets.html``, rendered alone for every widget type: the right input
and attributes, the value shown (options selected, escaped), errors, required marks and help linked
for screen readers. Also the words around them, and values as pages show them (``views.display``)."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from loomcrm.engine.plugins import make_plugin_manager
from loomcrm.engine.testing import compile_entities
from loomcrm.generators.admin.messages import MESSAGES, translator
from loomcrm.generators.admin.views import WIDGETS, FieldView, display
from loomcrm.generators.templates import BUILT_IN, template_environment

EVIL = '<script>alert("x")</script>'
CALL = '{% from "admin/_widgets.html" import input with context %}{{ input(view, value, errors, t) }}'


@pytest.fixture(scope="module")
def env():
    manifest = compile_entities("entities:\n  deal:\n    fields:\n      title: {type: string}\n")
    return template_environment(manifest, make_plugin_manager(entry_points=False))


class Elements(HTMLParser):
    """The elements of a fragment (tag, attributes), and its text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.texts.append(data)

    def all(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.found if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    def one(self, tag: str, **attrs: str) -> dict[str, str | None]:
        matches = self.all(tag, **attrs)
        assert len(matches) == 1, f"{len(matches)} <{tag} {attrs}> in {self.found}"
        return matches[0]

    @property
    def text(self) -> str:
        return "".join(self.texts)


def view(widget: str, **kwargs) -> FieldView:
    values = {"name": "f", "label": "Field", "widget": widget, "required": False, "editable": True, **kwargs}
    return FieldView(**values)


def render(env, field: FieldView, value=None, errors=None, locale: str = "en") -> str:
    return env.from_string(CALL).render(view=field, value=value, errors=errors or [], t=translator(locale),
                                        prefix="/admin", entity=SimpleNamespace(plural="deals"))


def the_input(html: str, field: FieldView) -> tuple[str, dict[str, str | None]]:
    """The element that carries the field's id (what the label points at)."""
    found = [(tag, attrs) for tag, attrs in Elements(html).found if attrs.get("id") == f"f-{field.name}"]
    assert len(found) == 1, html
    return found[0]


OPTIONS = (("open", "Open"), ("won", "Won"), ("lost", "Lost"))
#: For every widget: its view, a value, and the element and attributes that value must give.
CASES = {
    "text": (view("text", max_length=80), "Ada", "input", {"type": "text", "value": "Ada", "maxlength": "80"}),
    "textarea": (view("textarea"), "line one\nline two", "textarea", {"rows": "4"}),
    "number": (view("number", step="1", min=0, max=10), 7, "input",
               {"type": "number", "value": "7", "step": "1", "min": "0", "max": "10"}),
    "money": (view("money", step="0.01", currency="CNY"), "1200.50", "input",
              {"type": "number", "value": "1200.50", "step": "0.01", "inputmode": "decimal"}),
    "date": (view("date"), "2026-12-02", "input", {"type": "date", "value": "2026-12-02"}),
    "datetime": (view("datetime", timezone="Asia/Shanghai"), "2026-12-02T09:30", "input",
                 {"type": "datetime-local", "value": "2026-12-02T09:30"}),
    "select": (view("select", options=OPTIONS), "won", "select", {}),
    "multiselect": (view("multiselect", options=OPTIONS), ["open", "lost"], "select", {"multiple": None}),
    "checkbox": (view("checkbox"), True, "input", {"type": "checkbox", "value": "true", "checked": None}),
    "email": (view("email"), "ada@example.com", "input", {"type": "email", "value": "ada@example.com"}),
    "tel": (view("tel"), "+86 10 1234 5678", "input", {"type": "tel", "value": "+86 10 1234 5678"}),
    "url": (view("url"), "https://example.com", "input", {"type": "url", "value": "https://example.com"}),
    "json": (view("json"), {"a": [1, 2]}, "textarea", {"rows": "6"}),
    "ref": (view("ref", target="accounts"), {"id": 7, "_title": "Acme"}, "input",
            {"type": "text", "value": "Acme #7", "data-ref": "accounts"}),
    "refs": (view("refs", target="segments"), [{"id": 3}, {"id": 4}], "input",
             {"type": "text", "data-refs": "segments"}),
}


def test_every_widget_of_the_field_types_is_covered():
    assert set(WIDGETS.values()) == set(CASES)


@pytest.mark.parametrize("widget", sorted(CASES))
def test_a_widget_shows_its_value_in_the_right_input(env, widget):
    field, value, tag, attrs = CASES[widget]
    html = render(env, field, value)
    found_tag, found = the_input(html, field)
    assert found_tag == tag
    for name, expected in attrs.items():
        assert name in found and found[name] == expected, (name, found)
    assert found.get("name") == "f"
    assert "required" not in found and "aria-invalid" not in found and "aria-describedby" not in found
    assert Elements(html).one("div")["data-widget"] == widget
    assert "Field" in Elements(html).text


@pytest.mark.parametrize("widget", sorted(CASES))
def test_a_widget_with_errors_says_so_and_links_the_message(env, widget):
    field, value, _, _ = CASES[widget]
    html = render(env, field, value, errors=["is too long", "must be unique"])
    parsed = Elements(html)
    _, found = the_input(html, field)
    assert "invalid" in parsed.one("div")["class"].split()
    assert found["aria-invalid"] == "true" and found["aria-describedby"] == "f-f-error"
    error = parsed.one("p", id="f-f-error")
    assert error["class"] == "error" and error["role"] == "alert"
    assert "is too long must be unique" in parsed.text


@pytest.mark.parametrize("widget", sorted(set(CASES) - {"checkbox", "multiselect", "refs"}))
def test_a_required_widget_is_marked_for_the_browser_and_the_reader(env, widget):
    field, value, _, _ = CASES[widget]
    html = render(env, FieldView(**{**field.__dict__, "required": True}), value, locale="zh")
    _, found = the_input(html, field)
    assert "required" in found
    assert Elements(html).one("abbr")["title"] == "必填"


@pytest.mark.parametrize("widget", sorted(CASES))
def test_help_is_shown_and_linked_with_the_errors(env, widget):
    field, value, _, _ = CASES[widget]
    html = render(env, FieldView(**{**field.__dict__, "help": "Ask finance first"}), value, errors=["wrong"])
    parsed = Elements(html)
    _, found = the_input(html, field)
    assert found["aria-describedby"] == "f-f-help f-f-error"
    assert parsed.one("p", id="f-f-help")["class"] == "help" and "Ask finance first" in parsed.text


@pytest.mark.parametrize("widget", ["text", "textarea", "email", "tel", "url", "json", "date", "number", "money"])
def test_a_value_with_markup_is_escaped(env, widget):
    field = CASES[widget][0]
    html = render(env, FieldView(**{**field.__dict__, "label": "<b>Label</b>", "help": "<i>help</i>"}), EVIL,
                  errors=["<img src=x onerror=alert(1)>"])
    assert "<script>" not in html and "<b>" not in html and "<i>" not in html and "<img" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;Label&lt;/b&gt;" in html and "&lt;img src=x" in html
    _, found = the_input(html, field)
    if "value" in found:
        assert found["value"] == EVIL  # the browser gets the text back exactly


def test_the_selected_options_of_a_select_and_a_multiselect(env):
    parsed = Elements(render(env, CASES["select"][0], "won"))
    options = parsed.all("option")
    assert [o["value"] for o in options] == ["", "open", "won", "lost"]
    assert [o["value"] for o in options if "selected" in o] == ["won"]
    assert "Choose…" in parsed.text and "Won" in parsed.text
    parsed = Elements(render(env, CASES["multiselect"][0], ["open", "lost"]))
    assert [o["value"] for o in parsed.all("option") if "selected" in o] == ["open", "lost"]
    assert parsed.one("input", type="hidden")["name"] == "f__present"  # an empty choice is still sent
    assert [o["value"] for o in Elements(render(env, CASES["multiselect"][0], [])).all("option")
            if "selected" in o] == []


def test_option_labels_and_values_are_escaped(env):
    field = view("select", options=(('"><script>x</script>', "<b>bold</b>"),))
    html = render(env, field, '"><script>x</script>')
    assert "<script>" not in html and "<b>" not in html
    option = Elements(html).all("option")[1]
    assert option["value"] == '"><script>x</script>' and "selected" in option


def test_an_unchecked_checkbox_still_sends_its_marker(env):
    parsed = Elements(render(env, view("checkbox"), False))
    assert "checked" not in parsed.one("input", type="checkbox")
    assert parsed.one("input", type="hidden") == {"type": "hidden", "name": "f__present", "value": "1"}


def test_json_is_shown_as_json_and_text_as_typed(env):
    assert re.search(r'>\{"a": \[1, 2\]\}</textarea>', render(env, view("json"), {"a": [1, 2]}))
    assert ">not json {</textarea>" in render(env, view("json"), "not json {")  # kept as typed, to fix
    assert "></textarea>" in render(env, view("textarea"), None)


def test_refs_list_the_chosen_records_as_checked_boxes(env):
    parsed = Elements(render(env, view("refs", target="segments"), [{"id": 3}, {"id": 4}]))
    boxes = parsed.all("input", type="checkbox")
    assert [(b["name"], b["value"]) for b in boxes] == [("f", "3"), ("f", "4")]
    assert all("checked" in b for b in boxes)
    assert parsed.one("input", type="hidden")["name"] == "f__present"


def test_money_shows_its_currency_and_a_ref_its_lookup(env):
    assert "CNY" in Elements(render(env, CASES["money"][0], "1")).text
    _, ref = the_input(render(env, CASES["ref"][0], 7), CASES["ref"][0])
    assert ref["value"] == "#7" and ref["hx-get"] == "/admin/deals/lookup?field=f"


# --- the words around the widgets ---------------------------------------------------------------------


def test_every_word_the_templates_use_is_there_in_every_language():
    used = set()
    for path in (BUILT_IN / "admin").glob("*.html"):
        used |= set(re.findall(r"""\bt\(\s*['"]([a-z_]+)['"]""", path.read_text()))
    assert used
    for locale, words in MESSAGES.items():
        assert used <= set(words), f"{locale} lacks {sorted(used - set(words))}"
        assert set(words) == set(MESSAGES["en"]), f"{locale}: {sorted(set(words) ^ set(MESSAGES['en']))}"


def test_a_missing_word_falls_back_to_english_then_the_key():
    assert translator("zh")("save") == "保存"
    assert translator("zh-CN")("save") == "保存"
    assert translator("de")("save") == "Save"
    assert translator("zh")("no_such_key") == "no_such_key"


# --- values as pages show them ----------------------------------------------------------------------------


def test_dates_and_datetimes_in_the_readers_order_and_the_apps_time_zone():
    date, moment = view("date"), view("datetime", timezone="Asia/Shanghai")
    assert display(date, "2026-12-02", "zh") == "2026年12月2日"
    assert display(date, "2026-12-02", "en") == "2026-12-02"
    assert display(moment, "2026-12-02T17:30:00Z", "zh") == "2026年12月3日 01:30"  # UTC+8
    assert display(moment, "2026-12-02T17:30:00Z", "en") == "2026-12-03 01:30"
    assert display(view("datetime"), "2026-12-02T17:30:00Z", "en") == "2026-12-02 17:30"


def test_numbers_are_grouped_and_money_shows_its_scale_and_currency():
    assert display(view("number"), 1234567, "en") == "1,234,567"
    assert display(view("number"), "1234.5", "zh") == "1,234.5"
    money = view("money", step="0.01", currency="CNY")
    assert display(money, "1234567.5", "zh") == "CNY 1,234,567.50"
    assert display(money, 3, "en") == "CNY 3.00"


def test_options_and_booleans_read_in_the_readers_language():
    stage = view("select", options=(("won", "赢单"),))
    assert display(stage, "won", "zh") == "赢单" and display(stage, "gone", "zh") == "gone"
    assert display(view("multiselect", options=OPTIONS), ["open", "won"], "en") == "Open, Won"
    assert (display(view("checkbox"), True, "zh"), display(view("checkbox"), False, "en")) == ("是", "No")
    assert display(view("text"), None, "en") == "" and display(view("text"), "", "zh") == ""
