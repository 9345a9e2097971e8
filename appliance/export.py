"""Camtrap DP export: the captures of a time range as a Camera Trap Data Package.

Camtrap DP 1.0.2 is the TDWG standard read by camtrapdp/camtraptor (R), Agouti, Wildlife Insights
and GBIF (https://camtrap-dp.tdwg.org).  :func:`export_camtrap_dp` writes into a new folder:

- ``datapackage.json``: the package descriptor (profile, contributors, project, licences, spatial,
  temporal and taxonomic coverage), whose resources point at the official table schemas;
- ``deployments.csv``: one deployment, from the deployment settings of the config;
- ``media.csv``: one row per capture;
- ``observations.csv``: one event-level ``unclassified`` observation per trigger (burst);
- ``media/``: the photos, ``<id>.jpg``, hard-linked or copied from the store (or none).

The index is only read (:class:`~appliance.store.IndexReader`), so an export may run beside the
running appliance.  The package is built in a hidden folder beside ``outdir`` and renamed into
place at the end: a failed export leaves nothing behind, and an existing non-empty folder is never
overwritten.
"""

import csv
import datetime
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from appliance import __version__
from appliance.config import Config
from appliance.exc import ExportError
from appliance.store import DB_NAME, IndexReader

log = logging.getLogger(__name__)

CAMTRAP_DP_VERSION = "1.0.2"
SCHEMA_URL = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{CAMTRAP_DP_VERSION}/"
MEDIA_MODES = ("copy", "link", "none")

# Column order of the Camtrap DP 1.0.2 table schemas (and of its example package).
DEPLOYMENT_FIELDS = (
    "deploymentID", "locationID", "locationName", "latitude", "longitude", "coordinateUncertainty",
    "deploymentStart", "deploymentEnd", "setupBy", "cameraID", "cameraModel", "cameraDelay",
    "cameraHeight", "cameraDepth", "cameraTilt", "cameraHeading", "detectionDistance",
    "timestampIssues", "baitUse", "featureType", "habitat", "deploymentGroups", "deploymentTags",
    "deploymentComments",
)  # fmt: skip
MEDIA_FIELDS = (
    "mediaID", "deploymentID", "captureMethod", "timestamp", "filePath", "filePublic", "fileName",
    "fileMediatype", "exifData", "favorite", "mediaComments",
)  # fmt: skip
OBSERVATION_FIELDS = (
    "observationID", "deploymentID", "mediaID", "eventID", "eventStart", "eventEnd", "observationLevel",
    "observationType", "cameraSetupType", "scientificName", "count", "lifeStage", "sex", "behavior",
    "individualID", "individualPositionRadius", "individualPositionAngle", "individualSpeed", "bboxX",
    "bboxY", "bboxWidth", "bboxHeight", "classificationMethod", "classifiedBy",
    "classificationTimestamp", "classificationProbability", "observationTags", "observationComments",
)  # fmt: skip


def _timestamp(moment: datetime.datetime) -> str:
    # Whole seconds: the table schemas' datetime format is %Y-%m-%dT%H:%M:%S%z.
    return moment.isoformat(timespec="seconds")


def _bool(value) -> str:
    return "true" if value else "false"


def _check_outdir(outdir: Path) -> None:
    if outdir.exists() and (not outdir.is_dir() or any(outdir.iterdir())):
        raise ExportError(f"{outdir}: exists and is not an empty folder; refusing to overwrite it")


def _place_media(source: Path, target: Path, mode: str) -> None:
    if mode == "link":
        try:
            os.link(source, target)
            return
        except FileNotFoundError:
            raise
        except OSError:  # another filesystem (EXDEV), or one without hard links
            pass
    shutil.copyfile(source, target)


def export_camtrap_dp(
    config: Config,
    reader: IndexReader,
    outdir: Path,
    *,
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
    media: str = "copy",
    progress: Callable[[int, int], None] | None = None,
    now: datetime.datetime | None = None,
) -> dict:
    """Write the captures with ``since <= captured_at < until`` (aware datetimes; None: no bound)
    as a Camtrap DP package into ``outdir``, which must not exist or be empty.

    ``media``: ``"copy"`` the photos, ``"link"`` them (hard links, copies across filesystems), or
    ``"none"`` (metadata only; filePath still names ``media/<id>.jpg``).  ``progress(done, total)``
    is called as captures are written.  Captures deleted by cleanup while the export runs are
    left out and logged (with ``"none"``, only those gone from the index before it is read).

    Returns ``{"captures": n, "events": n, "bytes": media bytes written, "skipped": n}``.  Raises
    :class:`~appliance.exc.ExportError` (nothing written) when latitude/longitude are not set, the
    data directory holds no index, the deployment dates cannot be found (no captures and no
    configured dates) or ``outdir`` is not empty; ``OSError`` when writing fails (the partial
    package is removed).
    """
    if media not in MEDIA_MODES:
        raise ExportError(f"media: {media!r} must be one of {', '.join(MEDIA_MODES)}")
    missing = [key for key in ("latitude", "longitude") if getattr(config, key) == ""]
    if missing:
        raise ExportError(
            f"{', '.join(missing)}: not set in the config; Camtrap DP requires the camera's position "
            "(decimal degrees, e.g. latitude = 51.496, longitude = 4.774)"
        )
    if not (reader.data_dir / DB_NAME).is_file():
        raise ExportError(f"{reader.data_dir}: no capture index ({DB_NAME}); check data_dir")
    outdir = Path(outdir)
    _check_outdir(outdir)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", suffix=".partial", dir=outdir.parent))
    try:
        summary = _write_package(config, reader, work, since, until, media, progress, now)
        _check_outdir(outdir)  # again: it may have been filled meanwhile
        # mkdtemp's folder is private (0700): give the package the empty folder's mode, or 0755.
        os.chmod(work, outdir.stat().st_mode & 0o7777 if outdir.exists() else 0o755)
        # Replaces an empty folder; fails (ENOTEMPTY) rather than overwrite one filled just now.
        os.rename(work, outdir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return summary


def _write_package(config, reader, work, since, until, media, progress, now) -> dict:
    total, first, last = reader.span_between(since, until)
    start = config.deployment_start or first
    end = config.deployment_end or last
    if start is None or end is None:
        raise ExportError(
            "no captures in the range, and deployment_start/deployment_end are not set: "
            "the deployment's dates are unknown"
        )
    start, end = datetime.datetime.fromisoformat(start), datetime.datetime.fromisoformat(end)
    deployment_id = config.deployment_id or f"{config.camera_id or 'appliance'}-{start:%Y%m%d}"
    data_dir = reader.data_dir
    if media != "none":
        (work / "media").mkdir()
    events: dict[str, list[str]] = {}  # event id -> [first timestamp, last timestamp]
    methods = set()
    done = written_bytes = skipped = 0
    timestamp_issues = False
    with open(work / "media.csv", "w", newline="", encoding="utf-8") as rows_file:
        rows = csv.DictWriter(rows_file, MEDIA_FIELDS)
        rows.writeheader()
        for capture in reader.iter_between(since, until):
            done += 1
            if progress:
                progress(done, max(total, done))
            name = f"{capture['id']}.jpg"
            if media != "none":
                try:
                    _place_media(data_dir / capture["media_path"], work / "media" / name, media)
                except FileNotFoundError:
                    log.warning("capture %s left out: deleted while exporting", capture["id"])
                    skipped += 1
                    continue
                written_bytes += capture["bytes"]
            stamp = _timestamp(datetime.datetime.fromisoformat(capture["captured_at"]))
            timestamp_issues |= not capture["clock_synced"]
            if capture["capture_method"]:
                methods.add(capture["capture_method"])
            event_id = capture["event_id"] or capture["id"]
            events.setdefault(event_id, [stamp, stamp])[1] = stamp
            exif = json.loads(capture["metadata"] or "{}").get("exif")
            rows.writerow(
                {
                    "mediaID": capture["id"],
                    "deploymentID": deployment_id,
                    "captureMethod": capture["capture_method"] or "",
                    "timestamp": stamp,
                    "filePath": f"media/{name}",
                    "filePublic": "false",
                    "fileName": name,
                    "fileMediatype": "image/jpeg",
                    "exifData": json.dumps(exif, default=str) if exif else "",
                    "favorite": _bool(capture["protected"]),
                    "mediaComments": "",
                }
            )

    _write_csv(
        work / "deployments.csv",
        DEPLOYMENT_FIELDS,
        [
            {
                "deploymentID": deployment_id,
                "locationID": config.location_id,
                "locationName": config.location_name,
                "latitude": config.latitude,
                "longitude": config.longitude,
                "coordinateUncertainty": config.coordinate_uncertainty_m,
                "deploymentStart": _timestamp(start),
                "deploymentEnd": _timestamp(end),
                "setupBy": config.setup_by,
                "cameraID": config.camera_id,
                "cameraModel": config.camera_model,
                "cameraHeight": config.camera_height_m,
                "cameraTilt": config.camera_tilt_deg,
                "cameraHeading": config.camera_heading_deg,
                "timestampIssues": _bool(timestamp_issues),
                "baitUse": _bool(config.bait_use),
                "featureType": config.feature_type,
                "habitat": config.habitat,
            }
        ],
    )
    _write_csv(
        work / "observations.csv",
        OBSERVATION_FIELDS,
        (
            {
                "observationID": event_id,
                "deploymentID": deployment_id,
                "eventID": event_id,
                "eventStart": event_start,
                "eventEnd": event_end,
                "observationLevel": "event",
                "observationType": "unclassified",
            }
            for event_id, (event_start, event_end) in events.items()
        ),
    )
    descriptor = _descriptor(config, deployment_id, start, end, methods, now)
    (work / "datapackage.json").write_text(json.dumps(descriptor, indent=2) + "\n", encoding="utf-8")
    return {"captures": done - skipped, "events": len(events), "bytes": written_bytes, "skipped": skipped}


def _write_csv(path: Path, fields: tuple[str, ...], rows) -> None:
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _descriptor(config, deployment_id, start, end, methods, now) -> dict:
    now = now or datetime.datetime.now(datetime.UTC)
    resources = [
        {
            "name": name,
            "path": f"{name}.csv",
            "profile": "tabular-data-resource",
            "format": "csv",
            "mediatype": "text/csv",
            "encoding": "utf-8",
            "schema": f"{SCHEMA_URL}{name}-table-schema.json",
        }
        for name in ("deployments", "media", "observations")
    ]
    descriptor = {
        "resources": resources,
        "profile": f"{SCHEMA_URL}camtrap-dp-profile.json",
        # Data Package names: lower-case letters, digits, "-", "_" and ".".
        "name": re.sub(r"[^a-z0-9._-]+", "-", deployment_id.lower()).strip("-") or "appliance",
        "created": _timestamp(now.astimezone(datetime.UTC).replace(microsecond=0)),
        "title": config.project_title or deployment_id,
        "contributors": [
            {"title": name, "role": "contact" if i == 0 else "contributor"}
            for i, name in enumerate(config.contributors)
        ],
        "sources": [{"title": "camtrap-appliance", "version": __version__}],
        "project": {
            "title": config.project_title or deployment_id,
            "samplingDesign": config.sampling_design,
            "captureMethod": sorted(methods) or ["activityDetection"],
            "individualAnimals": False,
            "observationLevel": ["event"],
        },
        "spatial": {"type": "Point", "coordinates": [config.longitude, config.latitude]},
        "temporal": {"start": start.date().isoformat(), "end": end.date().isoformat()},
        "taxonomic": [],
    }
    if config.data_license:
        descriptor["licenses"] = [
            {"name": config.data_license, "scope": "data"},
            {"name": config.media_license, "scope": "media"},
        ]
    return descriptor
