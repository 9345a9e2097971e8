"""The actions handed to the main loop (``appliance.web.actions``): a test shot, protect and
unprotect, done by a real main loop; its errors answered by their type."""

import datetime
import hashlib
import queue
import sqlite3

import bottle
import pytest
from web_client import BEARER, UNKNOWN_ID, bind_request, take

from appliance.exc import NotCaptured, StoreError, UnknownCapture
from appliance.loop import Request
from appliance.web.actions import Actions, error_status


def test_a_test_shot_is_captured_by_the_main_loop_with_trigger_manual(loop_app):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    row = reader.get(capture_id)
    assert row["trigger"] == "manual" and row["seq"] == 1 and (row["width"], row["height"]) == (64, 48)
    assert reader.counts(datetime.datetime.now(datetime.UTC))["total"] == 1
    media = app.get(f"/media/{capture_id}.jpg", status=200)
    assert hashlib.sha256(media.body).hexdigest() == row["sha256"]
    assert app.get(f"/api/captures/{capture_id}").json["trigger"] == "manual"
    assert take(app) != capture_id and reader.counts(datetime.datetime.now(datetime.UTC))["total"] == 2


def test_protect_and_unprotect_change_the_index(loop_app):
    app, reader = loop_app.app, loop_app.reader
    capture_id = take(app)
    assert reader.get(capture_id)["protected"] == 0
    response = app.post(f"/api/captures/{capture_id}/protect", headers=BEARER, status=200)
    assert response.json == {"id": capture_id, "protected": True}
    assert reader.get(capture_id)["protected"] == 1
    assert app.get(f"/api/captures/{capture_id}").json["protected"] is True
    response = app.post(f"/api/captures/{capture_id}/unprotect", headers=BEARER, status=200)
    assert response.json == {"id": capture_id, "protected": False}
    assert reader.get(capture_id)["protected"] == 0


@pytest.mark.parametrize("prefix", ["/api/captures/", "/captures/"])
@pytest.mark.parametrize("verb", ["protect", "unprotect"])
def test_protecting_an_unknown_capture_is_404_and_a_malformed_id_400(loop_app, prefix, verb):
    app = loop_app.app
    take(app)
    assert "no such capture" in app.post(f"{prefix}{UNKNOWN_ID}/{verb}", headers=BEARER, status=404).text
    app.post(f"{prefix}{UNKNOWN_ID.upper()}/{verb}", headers=BEARER, status=400)
    assert all(row["protected"] == 0 for row in loop_app.reader.page())


# --- Without HTTP: the handlers over a main loop of their own ---------------------------------------


class InstantLoop:
    """A main loop that does each request at once, in the caller's thread: it knows the captures
    ``known``; a test shot stores ``shot`` (or fails, with ``shot`` None)."""

    def __init__(self, known=(), shot="f" * 32):
        self.known, self.shot, self.requests = set(known), shot, []

    def submit(self, request: Request) -> None:
        self.requests.append(request)
        if request.action == "capture":
            request.result = [self.shot] if self.shot else []
            request.error = None if self.shot else NotCaptured("the capture failed; see the status page")
        elif request.capture_id not in self.known:
            request.error = UnknownCapture(request.capture_id)
        request.done.set()


def test_the_action_handlers_answer_without_http():
    known = "a" * 32
    loop = InstantLoop(known=[known])
    actions = Actions(loop.submit)
    bind_request()  # the form's 303 keeps the headers of the response so far
    assert actions.capture() == {"captured": ["f" * 32]}
    assert actions.protect(known, "protect") == {"id": known, "protected": True}
    assert actions.protect(known, "unprotect") == {"id": known, "protected": False}
    with pytest.raises(bottle.HTTPResponse) as redirect:
        actions.protect_form(known, "protect")
    assert redirect.value.status_code == 303 and redirect.value.headers["Location"] == f"/captures/{known}"
    assert [(r.action, r.capture_id) for r in loop.requests] == [
        ("capture", None), ("protect", known), ("unprotect", known), ("protect", known)
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownCapture(UNKNOWN_ID), 404),
        (NotCaptured("the capture failed; see the status page"), 503),
        (StoreError("disk I/O error"), 503),
        (sqlite3.OperationalError("database is locked"), 503),
    ],
)
def test_an_actions_error_is_answered_by_its_type(error, status):
    def failing(request: Request) -> None:
        request.error = error
        request.done.set()

    with pytest.raises(bottle.HTTPError) as answer:
        Actions(failing).protect(UNKNOWN_ID, "protect")
    assert (answer.value.status_code, answer.value.body) == (status, str(error))
    assert error_status(error) == status


def test_an_unknown_capture_is_a_404_with_the_reason():
    with pytest.raises(bottle.HTTPError) as answer:
        Actions(InstantLoop().submit).protect(UNKNOWN_ID, "unprotect")
    assert (answer.value.status_code, answer.value.body) == (404, "no such capture")


def test_a_failed_test_shot_is_a_503():
    with pytest.raises(bottle.HTTPError) as answer:
        Actions(InstantLoop(shot=None).submit).capture()
    assert answer.value.status_code == 503 and "the capture failed" in answer.value.body


def test_a_main_loop_that_does_not_answer_in_time_is_a_503():
    waiting = queue.Queue()
    with pytest.raises(bottle.HTTPError) as answer:
        Actions(waiting.put, timeout_s=0.05).capture()
    assert answer.value.status_code == 503 and "busy" in answer.value.body
    assert waiting.get_nowait().action == "capture"


def test_without_a_main_loop_actions_are_off():
    with pytest.raises(bottle.HTTPError) as answer:
        Actions(None).capture()
    assert answer.value.status_code == 403 and "actions are off" in answer.value.body


def test_a_malformed_id_is_a_400_before_the_main_loop_is_asked():
    loop = InstantLoop()
    with pytest.raises(bottle.HTTPError) as answer:
        Actions(loop.submit).protect(UNKNOWN_ID.upper(), "protect")
    assert answer.value.status_code == 400 and loop.requests == []
