"""The web app as a whole (``appliance.web.app``): its route table, and a fuzz of paths, queries
and methods against it in-process."""

import queue
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web_client import NASTY_SEGMENTS, TOKEN, indexed_files, take

from appliance.status import StatusCollector
from appliance.store import TRIGGERS, IndexReader
from appliance.web import Views, WebDeps, routes
from appliance.web.plugins import IMMUTABLE, REVALIDATE


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_requests_never_get_a_5xx_nor_a_file_outside_the_index(loop_app, data):
    app, reader = loop_app.app, loop_app.reader
    if not reader.page(limit=1):
        take(app)
        take(app)
    ids = [row["id"] for row in reader.page(limit=10)]
    segment = st.one_of(
        st.sampled_from(NASTY_SEGMENTS),
        st.text(max_size=20).map(lambda text: urllib.parse.quote(text, safe="")),
        st.sampled_from(ids),
        st.text(alphabet="0123456789abcdefABCDEF", min_size=30, max_size=34),
        st.integers(200, 5000).map(lambda n: "a" * n),
    )
    suffix = st.sampled_from(["", ".jpg", ".webp", ".db", ".jpg%00", "/", "/protect", "/unprotect"])
    prefix = st.sampled_from(["/", "/captures/", "/api/captures/", "/thumbnails/", "/media/"])
    made_up = st.tuples(prefix, st.lists(segment, max_size=3), suffix).map(
        lambda p: p[0] + "/".join(p[1]) + p[2]
    )
    real = st.sampled_from([f"/media/{i}.jpg" for i in ids] + [f"/thumbnails/{i}.webp" for i in ids])
    path = data.draw(st.one_of(made_up, real))
    value = st.one_of(
        st.integers(-5, 2**64).map(str),
        st.text(max_size=12),
        st.sampled_from(["", "2024-03-10", "2024-02-30", "20240310", *TRIGGERS]),
    )
    query = data.draw(st.dictionaries(st.sampled_from(["before", "day", "trigger", "limit"]), value))
    method = data.draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]))
    authorization = data.draw(st.sampled_from([None, "Bearer wrong", f"Bearer {TOKEN}"]))
    headers = {"Authorization": authorization} if authorization else {}
    url = path + ("?" + urllib.parse.urlencode(query) if query else "")
    response = app.request(url, method=method, headers=headers, expect_errors=True)
    assert response.status_int < 500, (method, url, response.status, response.text[:200])
    if response.status_int == 200 and path.startswith(("/media/", "/thumbnails/")) and method == "GET":
        assert response.body in indexed_files(reader), (method, url)


# --- The route table -------------------------------------------------------------------------------


@pytest.fixture
def views(store) -> Views:
    """The handlers over ``store``, actions on (a token and a main loop that never answers)."""
    reader = IndexReader(store.data_dir)
    status = StatusCollector(reader, mode="simulation", started_monotonic=0)
    return Views.of(WebDeps(reader, status.collect, submit=queue.Queue().put, token=TOKEN))


def test_the_route_table_guards_every_action_and_only_the_actions(views):
    table = routes(views)
    action = views.auth.action
    guarded = {(method, path) for method, path, _, options in table if action in options.get("apply", [])}
    assert guarded == {(method, path) for method, path, *_ in table if method == "POST"} - {
        ("POST", "/login"), ("POST", "/logout")
    }  # fmt: skip
    assert len(guarded) == 5  # a test shot, protect/unprotect and copy to USB, from the API and the page
    options = {(method, path): options for method, path, _, options in table}
    assert options["POST", "/login"]["apply"] == [views.auth.actions_enabled, views.auth.same_origin]
    assert options["POST", "/logout"]["apply"] == [views.auth.same_origin]
    assert views.auth.private in options["GET", "/export/camtrap-dp.zip"]["apply"]


def test_the_route_table_has_each_method_and_path_once_and_files_cached_for_good(views):
    table = routes(views)
    assert len({(method, path) for method, path, *_ in table}) == len(table)
    cached = {path: options.get("cache") for method, path, _, options in table if method == "GET"}
    assert cached["/thumbnails/<name>"] == cached["/media/<name>"] == IMMUTABLE
    assert {path for path, cache in cached.items() if cache == REVALIDATE} == {
        "/", "/favicon.ico", "/style.css", "/captures", "/captures/<capture_id>"
    }  # fmt: skip


def test_every_route_of_the_table_is_served(views, client, captures):
    # Each route of the table answers (no 404 or 405 but the export, which this app has not).
    app = client(token=TOKEN, submit=queue.Queue().put)
    capture_id = captures[2]["id"]
    values = {
        "<capture_id>": capture_id, "<verb:re:protect|unprotect>": "protect", "<name>": f"{capture_id}.jpg"
    }  # fmt: skip
    for method, path, *_ in routes(views):
        url = path
        for wildcard, value in values.items():
            url = url.replace(wildcard, value)
        response = app.request(url, method=method, expect_errors=True)
        assert response.status_int not in (404, 405) or url.startswith("/export"), (method, url)
