"""Reading a request (``appliance.web.request``): every bad query value or capture id is a 400
naming it, an unknown capture a 404."""

import datetime

import bottle
import pytest
import requests
from web_client import UNKNOWN_ID, bind_request

from appliance.store import TRIGGERS
from appliance.web.request import cookie, day, header, next_url, query, seq, trigger

BAD_QUERIES = [
    ("before", "abc"),
    ("before", "0"),
    ("before", "-3"),
    ("before", str(2**63)),
    ("day", "2024-02-30"),
    ("day", "yesterday"),
    ("trigger", "sneeze"),
    ("trigger", "MOTION"),
]


@pytest.mark.parametrize(("name", "value"), BAD_QUERIES)
@pytest.mark.parametrize("path", ["/captures", "/api/captures"])
def test_bad_query_values_are_400_naming_the_parameter(client, path, name, value):
    response = client().get(path, params={name: value}, status=400)
    assert response.content_type == "text/plain"
    assert response.text.startswith(f"400 bad {name}: ")


@pytest.mark.parametrize("value", ["0", "-1", "ten", "1.5"])
def test_bad_limit_is_400_naming_it(client, value):
    assert client().get("/api/captures", params={"limit": value}, status=400).text.startswith("400 bad limit")


@pytest.mark.parametrize(
    ("capture_id", "status"),
    [
        (UNKNOWN_ID, 404),
        (UNKNOWN_ID.upper(), 400),
        (UNKNOWN_ID[:31], 400),
        (UNKNOWN_ID + "0", 400),
        (UNKNOWN_ID + ".jpg", 400),
        # WSGI servers decode %2f in PATH_INFO (webtest and waitress do): no route, or a bad id.
        ("%2e%2e%2fcaptures.db", [400, 404]),
    ],
)
@pytest.mark.parametrize("prefix", ["/captures/", "/api/captures/"])
def test_malformed_capture_id_is_400_and_unknown_is_404(client, prefix, capture_id, status):
    response = client().get(prefix + capture_id, status=status)
    assert response.content_type == "text/plain"


@pytest.mark.parametrize("path", ["/captures", "/api/captures"])
def test_the_last_day_of_the_calendar_is_a_400_and_the_first_a_200(live, path):
    response = requests.get(f"{live.url.rstrip('/')}{path}?day=9999-12-31", timeout=5)
    assert response.status_code == 400 and response.text == "400 bad day: '9999-12-31'\n"
    assert requests.get(f"{live.url.rstrip('/')}{path}?day=0001-01-01", timeout=5).status_code == 200


# --- Without HTTP ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "good", "bad"),
    [
        (seq, {"1": 1, str(2**63 - 1): 2**63 - 1}, ["0", "-1", str(2**63), "1.5", "x"]),
        (day, {"2024-03-10": datetime.date(2024, 3, 10)}, ["9999-12-31", "2024-02-30", "20240310x"]),
        (trigger, {t: t for t in TRIGGERS}, ["sneeze", "MOTION", ""]),
    ],
)
def test_each_parser_takes_what_the_index_can_answer_and_refuses_the_rest(parse, good, bad):
    for value, parsed in good.items():
        assert parse(value) == parsed
    for value in bad:
        with pytest.raises(ValueError):
            parse(value)


def test_a_bad_query_value_is_a_400_naming_it_and_an_empty_one_the_default():
    bind_request(query="before=abc&day=")
    with pytest.raises(bottle.HTTPError) as answer:
        query("before", seq)
    assert (answer.value.status_code, answer.value.body) == (400, "bad before: 'abc'")
    assert query("day", day, "none") == "none" and query("trigger", trigger) is None


def test_the_next_page_keeps_the_filters_and_starts_below_the_last_seq():
    rows = [{"seq": 9}, {"seq": 7}]
    filters = {"before": 12, "day": datetime.date(2024, 3, 10), "trigger": None}
    assert next_url("/captures", rows, 2, filters) == "/captures?day=2024-03-10&before=7"
    assert next_url("/captures", rows, 3, filters) is None  # fewer than a page: the last one


def test_a_cookie_is_read_past_cookies_the_standard_parser_refuses():
    bind_request(headers={"Cookie": 'a{=1; b="x; appliance_session=abc; other=2'})
    assert cookie("appliance_session") == "abc" and cookie("missing") == ""
    assert header("Cookie").startswith("a{=1")
