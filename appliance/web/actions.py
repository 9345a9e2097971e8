"""The actions the web asks of the main loop, which alone writes: a test shot (``POST
/api/capture``), protecting or unprotecting a capture (``POST /api/captures/<id>/protect``,
``/unprotect``, and the same under ``/captures/<id>/`` for the page's form), and a copy to the USB
stick now (``POST /api/offload``, and ``POST /offload`` for the page's "Copy to USB now").

Each is handed to the main loop as a :class:`~appliance.loop.Request` and waited for; the error it
comes back with is answered by its type (:data:`ACTION_ERRORS`).  Who may ask is the route
table's business (:meth:`~appliance.web.auth.Auth.action`).
"""

from collections.abc import Callable

import bottle

from appliance.exc import NoStick, UnknownCapture
from appliance.loop import Request
from appliance.web.auth import ACTIONS_OFF
from appliance.web.request import capture_id as valid_id
from appliance.web.request import see_other

# Seconds a web request waits for the main loop to do its action.
ACTION_TIMEOUT_S = 15
# The status an action's error (Request.error) answers with, by its type (the first that matches);
# any other error: 503, the appliance cannot do it now.
ACTION_ERRORS = ((UnknownCapture, 404), (NoStick, 409))


def error_status(error: Exception) -> int:
    """The HTTP status for an action's ``error`` (see :data:`ACTION_ERRORS`)."""
    return next((code for kind, code in ACTION_ERRORS if isinstance(error, kind)), 503)


class Actions:
    """The handlers of the actions.

    :param submit: hands a :class:`~appliance.loop.Request` to the main loop (its queue's
        ``put``); None: no main loop takes them (a 403, as the route table's guard answers
        first).
    :param timeout_s: seconds to wait for the main loop; past them, a 503.
    """

    def __init__(self, submit: Callable[[Request], None] | None, *, timeout_s: float = ACTION_TIMEOUT_S):
        self._submit = submit
        self._timeout_s = timeout_s

    def ask(self, request: Request) -> Request:
        """Hand ``request`` to the main loop and wait for it to be done; a 503 when the main loop
        does not answer in time, and the status of :func:`error_status` for the error it
        reports."""
        if self._submit is None:
            raise bottle.HTTPError(403, ACTIONS_OFF)
        self._submit(request)
        if not request.done.wait(self._timeout_s):
            raise bottle.HTTPError(503, "the appliance is busy; try again")
        if request.error is not None:
            raise bottle.HTTPError(error_status(request.error), str(request.error))
        return request

    def capture(self) -> dict:
        """``POST /api/capture``: a test shot (trigger ``manual``); ``{"captured": [ids]}``."""
        return {"captured": self.ask(Request("capture")).result}

    def protect(self, capture_id: str, verb: str) -> dict:
        """``POST /api/captures/<id>/protect`` or ``/unprotect``: ``{"id": id, "protected":
        bool}``; 400 for a malformed id, 404 for an unknown one."""
        protected = self._protect(capture_id, verb)
        return {"id": capture_id, "protected": protected}

    def protect_form(self, capture_id: str, verb: str):
        """``POST /captures/<id>/protect`` or ``/unprotect`` (the page's form): a 303 back to the
        capture's page."""
        self._protect(capture_id, verb)
        see_other(f"/captures/{capture_id}")

    def offload(self) -> dict:
        """``POST /api/offload``: start a copy run to the USB stick now (nothing new when one is
        under way); ``{"offload": "started"}``, or 409 with the reason when no stick can be
        written (none mounted at ``offload_usb_path``, or without the label).  Its progress is in
        ``/api/status`` under ``offload``."""
        self.ask(Request("offload"))
        return {"offload": "started"}

    def offload_form(self):
        """``POST /offload`` (the status page's "Copy to USB now"): a 303 back to the status page."""
        self.ask(Request("offload"))
        see_other("/")

    def _protect(self, capture_id: str, verb: str) -> bool:
        self.ask(Request(verb, valid_id(capture_id)))
        return verb == "protect"
