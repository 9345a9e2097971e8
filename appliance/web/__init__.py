"""The status page, gallery and JSON API (see :mod:`appliance.web.app`)."""

from appliance.web.app import *  # noqa: F403
from appliance.web.app import (  # noqa: F401
    LATEST_COUNT,
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    VIEWS,
    WebDeps,
    WebServer,
    __version__,
    capture_json,
    make_app,
)
