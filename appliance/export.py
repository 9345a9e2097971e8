"""Camtrap DP export: the captures of a time range as a Camera Trap Data Package.

Camtrap DP 1.0.2 is the TDWG standard read by camtrapdp/camtraptor (R), Agouti, Wildlife Insights
and GBIF (https://camtrap-dp.tdwg.org).  A package holds:

- ``datapackage.json``: the package descriptor (profile, contributors, project, licences, spatial,
  temporal and taxonomic coverage), whose resources point at the official table schemas;
- ``deployments.csv``: one deployment, from the deployment settings of the config;
- ``media/``: the photos, ``<id>.jpg``, byte for byte as the store keeps them (or none);
- ``media.csv``: one row per capture;
- ``observations.csv``: one event-level ``unclassified`` observation per trigger (burst).

:class:`Package` reads it all from one snapshot of the index (:class:`~appliance.store.Snapshot`),
so an export may run beside the running appliance and its rows, events and photos agree; a photo
that cleanup deletes while the export runs is left out of the media and its rows.  Each photo is
opened before it is written, so it cannot vanish halfway.  The package is written as a folder by
:func:`export_camtrap_dp` (built in a hidden folder beside it, renamed into place at the end: a
failed export leaves nothing behind, and a non-empty folder is never overwritten), or streamed as a
ZIP archive by :func:`zip_stream` (zipstream-ng: one photo at a time, never the whole archive in
memory or on disk).
"""

import csv
import datetime
import hashlib
import hmac
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import weakref
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from zipstream import ZipStream

from appliance import __version__
from appliance.config import Config
from appliance.datadir import DataDir
from appliance.exc import ExportError
from appliance.store import DB_NAME, IndexReader

log = logging.getLogger(__name__)

CAMTRAP_DP_VERSION = "1.0.2"
SCHEMA_URL = f"https://raw.githubusercontent.com/tdwg/camtrap-dp/{CAMTRAP_DP_VERSION}/"
MEDIA_MODES = ("copy", "link", "none")
# Bytes read from a photo at a time when streaming it.
CHUNK_BYTES = 1 << 16
# CSV rows written between two chunks of a table.
CSV_ROWS_PER_CHUNK = 256

# Where systemd (then D-Bus) keeps the machine's id: 32 hex digits made once per installed system.
MACHINE_ID_PATHS = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
# Hex digits of the machine id's hash in a default deployment ID: 16.7 million values, enough to
# tell apart the traps of one project whose host names are all "raspberrypi".
MACHINE_ID_DIGITS = 6
# The application id the machine id is hashed with (HMAC-SHA256 keyed by the machine id, as
# systemd's sd_id128_get_machine_app_specific()): machine-id(5) says the id is confidential and
# "the ID or any part of it must not be used directly", and a package is published.
MACHINE_ID_APP = bytes.fromhex("5c1f0e6a9b2d4c7e8a3f1b6d0e9c2a47")

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


# The settings a package cannot do without: Camtrap DP requires the deployment's position.
REQUIRED_SETTINGS = ("latitude", "longitude")


def missing_settings(config: Config) -> tuple[str, ...]:
    """The settings of :data:`REQUIRED_SETTINGS` that ``config`` leaves unset (""), in that
    order.  While any is, every export raises :class:`~appliance.exc.ExportError` (the web's ZIP
    answers 409), and the status page says which to set instead of offering the download."""
    return tuple(key for key in REQUIRED_SETTINGS if getattr(config, key) == "")


def parse_time(text: str) -> datetime.datetime:
    """An ISO 8601 date or time (``2026-05-01``, ``2026-05-01T18:00+02:00``) as an aware datetime;
    one without an offset is UTC.  Raises ``ValueError`` for anything else, a time that has no
    UTC equivalent (``9999-12-31T23:00-05:00``) included."""
    moment = datetime.datetime.fromisoformat(text)
    moment = moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
    try:
        moment.astimezone(datetime.UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None
    return moment


def _timestamp(moment: datetime.datetime) -> str:
    # Whole seconds: the table schemas' datetime format is %Y-%m-%dT%H:%M:%S%z.
    return moment.isoformat(timespec="seconds")


def _stamp(captured_at: str) -> str:
    return _timestamp(datetime.datetime.fromisoformat(captured_at))


def _bool(value) -> str:
    return "true" if value else "false"


def csv_chunks(fields: tuple[str, ...], rows) -> Iterator[bytes]:
    """The CSV text of ``rows`` (dicts; missing fields empty) as UTF-8 chunks of a few rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fields, restval="")
    writer.writeheader()
    for n, row in enumerate(rows, 1):
        writer.writerow(row)
        if n % CSV_ROWS_PER_CHUNK == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


@dataclass
class Member:
    """One file of the package: ``name`` is its path inside it (``media/<id>.jpg``,
    ``media.csv``...).  Either ``chunks`` (its bytes, produced as they are read) or a photo:
    ``photo`` open for reading, ``source`` its path in the store, ``size`` its length in bytes."""

    name: str
    chunks: Iterator[bytes] | None = None
    photo: BinaryIO | None = None
    source: Path | None = None
    size: int | None = None


def _close(snapshot, on_close) -> None:
    try:
        snapshot.close()
    finally:
        on_close()


def trap_name() -> str:
    """This machine's name for a deployment ID: its host name and the first
    :data:`MACHINE_ID_DIGITS` hex digits of its machine id's hash (:data:`MACHINE_ID_PATHS`,
    hashed with :data:`MACHINE_ID_APP`, never shown itself), e.g. ``"raspberrypi-3f9a1c"``, or the
    host name alone where no machine id can be read.  Every Raspberry Pi OS image names its host
    ``raspberrypi``; the machine id, made at the first boot, tells two of them apart.  Reads the
    files at each call."""
    host = socket.gethostname().split(".")[0] or "appliance"
    for path in MACHINE_ID_PATHS:
        try:
            machine_id = path.read_text(encoding="ascii").strip().lower()
        except (OSError, UnicodeDecodeError):
            continue
        if len(machine_id) == 32 and set(machine_id) <= set("0123456789abcdef"):  # as machine-id(5) has it
            key = hmac.new(bytes.fromhex(machine_id), MACHINE_ID_APP, hashlib.sha256).hexdigest()
            return f"{host}-{key[:MACHINE_ID_DIGITS]}"
    return host


def default_deployment_id(camera_id: str, start: datetime.datetime) -> str:
    """The deployment ID when ``deployment_id`` is not set: ``camera_id`` (else :func:`trap_name`)
    and the deployment's ``start`` in UTC to the second, e.g. ``"trap-07-20260501T160000Z"`` or
    ``"raspberrypi-3f9a1c-20260501T160000Z"``, so that two traps, or two deployments of one trap,
    never share one.  ``start``: an aware datetime (a naive one is taken as local time)."""
    return f"{camera_id or trap_name()}-{start.astimezone(datetime.UTC):%Y%m%dT%H%M%SZ}"


class Package:
    """The Camtrap DP package of the captures with ``since <= captured_at < until`` (aware
    datetimes; None: no bound) in ``reader``'s index, with ``media`` ``"copy"`` or ``"link"`` (the
    photos are members) or ``"none"`` (metadata only; filePath still names ``media/<id>.jpg``).

    Checks everything the export needs on construction, and raises
    :class:`~appliance.exc.ExportError` when latitude/longitude are not set, the data directory
    holds no index, or the deployment's dates cannot be found (no captures and no configured
    dates).  Holds a snapshot of the index until :meth:`close` (or the end of a ``with``, or its
    garbage collection, so that a package never read cannot pin the WAL).  ``on_close()`` is
    called once, when it is closed or when its construction fails.  Once :meth:`members` is
    exhausted, :attr:`captures`, :attr:`events`, :attr:`bytes` and :attr:`skipped` (photos
    deleted meanwhile, or unreadable) say what the package holds.
    """

    def __init__(
        self,
        config: Config,
        reader: IndexReader,
        *,
        since: datetime.datetime | None = None,
        until: datetime.datetime | None = None,
        media: str = "copy",
        now: datetime.datetime | None = None,
        on_close: Callable[[], None] = lambda: None,
    ):
        try:
            self._check(config, reader, media)
            self._snapshot = reader.snapshot()
        except BaseException:
            on_close()
            raise
        self.config, self.data_dir, self.media = config, reader.data_dir, media
        self._files = DataDir(reader.data_dir)
        self.since, self.until = since, until
        self._finalizer = weakref.finalize(self, _close, self._snapshot, on_close)
        try:
            self.span = self._snapshot.span(since, until)
            start = config.deployment_start or self.span["first"]
            end = config.deployment_end or self.span["last"]
            if start is None or end is None:
                raise ExportError(
                    "no captures in the range, and deployment_start/deployment_end are not set: "
                    "the deployment's dates are unknown"
                )
            self.start = datetime.datetime.fromisoformat(start)
            self.end = datetime.datetime.fromisoformat(end)
        except BaseException:
            self.close()
            raise
        self.deployment_id = config.deployment_id or default_deployment_id(config.camera_id, self.start)
        self.name = package_name(self.deployment_id)
        self.created = now or datetime.datetime.now(datetime.UTC)
        self.captures = self.events = self.bytes = 0
        self.skipped: list[str] = []

    @staticmethod
    def _check(config: Config, reader: IndexReader, media: str) -> None:
        if media not in MEDIA_MODES:
            raise ExportError(f"media: {media!r} must be one of {', '.join(MEDIA_MODES)}")
        missing = missing_settings(config)
        if missing:
            raise ExportError(
                f"{', '.join(missing)}: not set in the config; Camtrap DP requires the camera's "
                "position (decimal degrees, e.g. latitude = 51.496, longitude = 4.774)"
            )
        if not (reader.data_dir / DB_NAME).is_file():
            raise ExportError(f"{reader.data_dir}: no capture index ({DB_NAME}); check data_dir")

    def __enter__(self) -> "Package":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._finalizer()  # once only, however often called

    @property
    def total(self) -> int:
        """Captures in range when the snapshot was taken."""
        return self.span["count"]

    def summary(self) -> dict:
        """``{"captures": n, "events": n, "bytes": media bytes, "skipped": n}``."""
        return {"captures": self.captures, "events": self.events, "bytes": self.bytes,
                "skipped": len(self.skipped)}  # fmt: skip

    def members(self, progress: Callable[[int, int], None] | None = None) -> Iterator[Member]:
        """Yield the package's files: the descriptor and deployments, then each photo (open until
        the next member is asked for), then media.csv and observations.csv, whose chunks must be
        consumed in that order.  ``progress(done, total)`` is called per capture, as the photos
        (or, with ``media="none"``, the media rows) are produced."""
        yield Member("datapackage.json", iter([json.dumps(self._descriptor(), indent=2).encode() + b"\n"]))
        yield Member("deployments.csv", csv_chunks(DEPLOYMENT_FIELDS, [self._deployment()]))
        if self.media != "none":
            for done, capture in enumerate(self._snapshot.captures(self.since, self.until), 1):
                if progress:
                    progress(done, self.total)
                source = self.data_dir / capture["media_path"]
                member = Member(f"media/{capture['id']}.jpg", source=source, size=capture["bytes"])
                try:
                    # Open: cleanup cannot take it away now.  Never through a symlink.
                    photo = self._files.open_read(capture["media_path"])
                except OSError as exc:  # deleted by cleanup meanwhile, unreadable (EIO, EACCES), a symlink
                    log.warning("capture %s left out of the export: %s", capture["id"], exc)
                    self.skipped.append(capture["id"])
                    continue
                with photo:
                    member.photo = photo
                    yield member
                self.bytes += capture["bytes"]
        yield Member("media.csv", csv_chunks(MEDIA_FIELDS, self._media_rows(progress)))
        yield Member("observations.csv", csv_chunks(OBSERVATION_FIELDS, self._observations()))

    def _media_rows(self, progress) -> Iterator[dict]:
        for capture in self._snapshot.captures(self.since, self.until, self.skipped):
            self.captures += 1
            if progress and self.media == "none":
                progress(self.captures, self.total)
            yield media_row(capture, self.deployment_id)

    def _observations(self) -> Iterator[dict]:
        for event_id, first, last in self._snapshot.events(self.since, self.until, self.skipped):
            self.events += 1
            yield observation_row(event_id, _stamp(first), _stamp(last), self.deployment_id)

    def _deployment(self) -> dict:
        return deployment_row(
            self.config, self.deployment_id, self.start, self.end, self.span["clock_issues"]
        )

    def _descriptor(self) -> dict:
        return descriptor(
            self.config, self.deployment_id, self.start, self.end, self.span["capture_methods"], self.created
        )


def package_name(deployment_id: str) -> str:
    """The Data Package ``name`` of a deployment: lower-case letters, digits, "-", "_" and "."."""
    return re.sub(r"[^a-z0-9._-]+", "-", deployment_id.lower()).strip("-") or "appliance"


def media_row(capture: dict, deployment_id: str) -> dict:
    """The ``media.csv`` row (:data:`MEDIA_FIELDS`) of ``capture`` (a row of the captures table),
    its photo at ``media/<id>.jpg``."""
    metadata = json.loads(capture["metadata"] or "{}")
    exif = metadata.get("exif")
    return {
        "mediaID": capture["id"],
        "deploymentID": deployment_id,
        "captureMethod": capture["capture_method"] or "",
        "timestamp": _stamp(capture["captured_at"]),
        "filePath": f"media/{capture['id']}.jpg",
        "filePublic": "false",
        # An imported photo keeps the name it had.
        "fileName": metadata.get("import", {}).get("name") or f"{capture['id']}.jpg",
        "fileMediatype": "image/jpeg",
        "exifData": json.dumps(exif, default=str) if exif else "",
        "favorite": _bool(capture["protected"]),
    }


def observation_row(event_id: str, start: str, end: str, deployment_id: str) -> dict:
    """The ``observations.csv`` row (:data:`OBSERVATION_FIELDS`) of one event (a trigger's burst)
    from ``start`` to ``end`` (timestamps as the table writes them): event-level, unclassified."""
    return {
        "observationID": event_id,
        "deploymentID": deployment_id,
        "eventID": event_id,
        "eventStart": start,
        "eventEnd": end,
        "observationLevel": "event",
        "observationType": "unclassified",
    }


def deployment_row(
    config: Config, deployment_id: str, start: datetime.datetime, end: datetime.datetime, clock_issues: bool
) -> dict:
    """The ``deployments.csv`` row (:data:`DEPLOYMENT_FIELDS`) of the deployment from ``start`` to
    ``end`` (aware datetimes), from the deployment settings of ``config``; ``clock_issues``: some
    photo was taken with an unsynchronised clock."""
    return {
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
        "timestampIssues": _bool(clock_issues),
        "baitUse": _bool(config.bait_use),
        "featureType": config.feature_type,
        "habitat": config.habitat,
    }


def resources() -> list[dict]:
    """A package's three table resources (``deployments``, ``media``, ``observations``), each a
    CSV file pointing at its Camtrap DP 1.0.2 table schema."""
    return [
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


def descriptor(
    config: Config,
    deployment_id: str,
    start: datetime.datetime,
    end: datetime.datetime,
    capture_methods: list[str],
    created: datetime.datetime,
) -> dict:
    """The ``datapackage.json`` of the deployment from ``start`` to ``end`` (aware datetimes) whose
    photos were taken by ``capture_methods`` (Camtrap DP's terms, e.g. ``["activityDetection"]``;
    empty: that one), made at ``created``."""
    title = config.project_title or deployment_id
    package = {
        "resources": resources(),
        "profile": f"{SCHEMA_URL}camtrap-dp-profile.json",
        "name": package_name(deployment_id),
        "created": _timestamp(created.astimezone(datetime.UTC).replace(microsecond=0)),
        "title": title,
        "contributors": [
            {"title": name, "role": "contact" if i == 0 else "contributor"}
            for i, name in enumerate(config.contributors)
        ],
        "sources": [{"title": "camtrap-appliance", "version": __version__}],
        "project": {
            "title": title,
            "samplingDesign": config.sampling_design,
            "captureMethod": capture_methods or ["activityDetection"],
            "individualAnimals": False,
            "observationLevel": ["event"],
        },
        "spatial": {"type": "Point", "coordinates": [config.longitude, config.latitude]},
        "temporal": {"start": start.date().isoformat(), "end": end.date().isoformat()},
        "taxonomic": [],
    }
    if config.data_license:
        package["licenses"] = [
            {"name": config.data_license, "scope": "data"},
            {"name": config.media_license, "scope": "media"},
        ]
    return package


def _check_outdir(outdir: Path) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise ExportError(f"{outdir}: is a file, not a folder: name a new or empty folder for the package")
    if outdir.exists() and any(outdir.iterdir()):
        raise ExportError(
            f"{outdir}: is not an empty folder; refusing to overwrite it: name a new or empty folder"
        )


def publish_folder(work: Path, outdir: Path) -> None:
    """Put the package built in ``work`` (a private temporary folder beside ``outdir``) in place at
    ``outdir``, with the mode of the empty folder there (else 0755).  Raises
    :class:`~appliance.exc.ExportError` when ``outdir`` was filled meanwhile, ``OSError`` when the
    rename fails (``ENOTEMPTY`` rather than overwrite a folder filled just now)."""
    _check_outdir(outdir)  # again: it may have been filled meanwhile
    # mkdtemp's folder is private (0700): give the package the empty folder's mode, or 0755.
    os.chmod(work, outdir.stat().st_mode & 0o7777 if outdir.exists() else 0o755)
    os.rename(work, outdir)


def _write_member(member: Member, target: Path, link: bool) -> None:
    if member.photo is not None and link:
        try:
            # The very file opened (through no symlink): /proc/self/fd/N names it.  A dir_fd makes
            # Python call linkat(2) with AT_SYMLINK_FOLLOW; plain link(2) would not follow it.
            fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.link(str(member.photo.fileno()), target, src_dir_fd=fds, follow_symlinks=True)
            finally:
                os.close(fds)
            return
        except OSError:  # another filesystem (EXDEV), one without hard links, or deleted just now
            pass
    with open(target, "wb") as out:
        if member.photo is not None:
            shutil.copyfileobj(member.photo, out, CHUNK_BYTES)
        else:
            out.writelines(member.chunks)


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
    """Write the :class:`Package` of the captures in range (arguments as there) into ``outdir``,
    which must not exist or be empty.  ``media="link"`` makes hard links (copies across
    filesystems).  ``progress(done, total)`` is called per capture.

    Returns :meth:`Package.summary`.  Raises :class:`~appliance.exc.ExportError` (nothing
    written) as :class:`Package` does, or when ``outdir`` is not empty; ``OSError`` when writing
    fails (the partial package is removed).
    """
    outdir = Path(outdir)
    _check_outdir(outdir)
    with Package(config, reader, since=since, until=until, media=media, now=now) as package:
        outdir.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", suffix=".partial", dir=outdir.parent))
        try:
            if media != "none":
                (work / "media").mkdir()
            for member in package.members(progress):
                _write_member(member, work / member.name, link=media == "link")
            publish_folder(work, outdir)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return package.summary()


def zip_stream(package: Package) -> Iterator[bytes]:
    """The ZIP archive of ``package``, produced as it is read: each photo is streamed from its
    file in chunks of :data:`CHUNK_BYTES` and stored as it is (a JPEG does not deflate), the tables
    are deflated.  Memory stays a few chunks whatever the package's size.  Closes the package at
    the end, and when the consumer stops early (a client that disconnects)."""
    stream = ZipStream(compress_type=zipfile.ZIP_STORED)
    try:
        for member in package.members():
            if member.photo is not None:
                chunks = iter(lambda photo=member.photo: photo.read(CHUNK_BYTES), b"")
                stream.add(chunks, member.name, size=member.size)
            else:
                stream.add(member.chunks, member.name, compress_type=zipfile.ZIP_DEFLATED)
            yield from stream.all_files()
        yield from stream.footer()
    except Exception:  # after the response has begun: the client only sees a truncated archive
        log.exception("export: the ZIP stream of %s failed", package.name)
        raise
    finally:
        package.close()
