"""``appliance fleet merge``: one Camtrap DP package of many traps.

Each trap leaves one folder per deployment on its USB sticks and on its remote (the layout of
:mod:`appliance.offload`: ``media/<id>.jpg``, ``datapackage.json``, ``deployments.csv``,
``media.csv``, ``observations.csv``, ``SHA256SUMS``).  :func:`merge` finds every such folder
under a local folder (down to :data:`FIND_DEPTH` levels, so a folder of stick dumps
``dumps/stick-a/<deployment>/`` works) or under an rclone remote (``fleet:camtrap-2026/``), and
writes one Camtrap DP 1.0.2 package of them all:

- ``deployments.csv``: one row per deployment.  Two folders of one deployment (two sticks of one
  trap) are one deployment when their rows agree on :data:`SAME_PLACE` (its start the earliest,
  its end the latest, ``timestampIssues`` true when either says so); otherwise the merge is
  refused, naming both folders and the fields that differ.
- ``media.csv`` and ``observations.csv``: every row of every folder, a photo held by two folders
  once when its rows are equal (refused, naming both, when they are not, or when it is in two
  deployments; an event cut in two by a stick is one event again, from its earliest start to its
  latest end).
- ``datapackage.json``: the resources and profile of :func:`appliance.export.descriptor`, the
  spatial coverage of all the deployments (a Point when they share one, else their bounding box),
  the temporal coverage from the first deployment's start to the last one's end, the capture
  methods of all; project, contributors and licences are the first folder's (in name order), with
  a note when another folder's differ.
- the photos, by ``media``: ``"copy"`` under ``media/<deployment folder>/<id>.jpg``, each checked
  against its folder's ``SHA256SUMS`` (a photo missing or differing fails the merge, naming each);
  ``"link"`` symbolic links to the photos of a local folder; ``"none"`` no photos, ``filePath``
  then naming the photo relative to the folder merged from (``<folder>/media/<id>.jpg``).

With ``since``/``until`` only the photos taken in ``[since, until)`` are kept, with the
observations of their events; a deployment left without photos is dropped.

The package is built in a hidden folder beside ``outdir`` and renamed into place at the end, as
:func:`appliance.export.export_camtrap_dp` does: a refused or failed merge leaves nothing in
``outdir``.  A remote is read through :class:`appliance.rclone.Rclone`, whose
:class:`~appliance.exc.RemoteTrouble` says what went wrong.  Nothing here runs at import time.
"""

import csv
import datetime
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from appliance import export
from appliance.exc import ExportError, MergeFailed, MergeRefused
from appliance.offload import SUMS_NAME, TABLES, folder_name
from appliance.rclone import Rclone

# Levels below the folder given that are searched for deployment folders: 3 finds
# dumps/2026-06/stick-a/<deployment>/.
FIND_DEPTH = 3
MEDIA_MODES = export.MEDIA_MODES
# The deployments.csv fields on which two folders of one deployment must agree.
SAME_PLACE = ("locationID", "latitude", "longitude", "cameraID")
# Photos fetched from a remote by one rclone call, and the time it may take: a minute, and 30 s
# a photo (a 300 kB photo over a 100 kbit/s link); rclone's own --timeout ends a stalled one.
REMOTE_BATCH = 100
REMOTE_BATCH_TIMEOUT_S = 60
REMOTE_PHOTO_TIMEOUT_S = 30
# Listing a remote and fetching the tables.
REMOTE_LIST_TIMEOUT_S = 300
CHUNK_BYTES = 1 << 20
# The columns the merge reads, which Camtrap DP 1.0 requires of each table.
REQUIRED_COLUMNS = {
    "deployments.csv": ("deploymentID", "latitude", "longitude", "deploymentStart", "deploymentEnd"),
    "media.csv": ("mediaID", "deploymentID", "timestamp", "filePath"),
    "observations.csv": ("observationID", "deploymentID", "eventStart", "eventEnd"),
}
# A mediaID the package can name a photo file by.
_FILE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
# What an rclone remote looks like ("name:path"), as opposed to a local path.
_REMOTE = re.compile(r"^[\w][\w.\- ]*:")


@dataclass
class Folder:
    """One deployment folder as read: ``name`` its path relative to the root merged from (POSIX,
    "" for the root itself), ``descriptor`` its datapackage.json, the rows of its three tables
    (dicts by column name), ``sums`` the SHA-256 (hex) of each file its SHA256SUMS lists, by
    path relative to the folder (``media/<id>.jpg``)."""

    name: str
    descriptor: dict
    deployments: list[dict]
    media: list[dict]
    observations: list[dict]
    sums: dict[str, str] = field(default_factory=dict)


@dataclass
class Photo:
    """A photo of the package: ``source`` its path relative to the root merged from, ``target``
    its path in the package (None: none), ``sha256`` what its folder's SHA256SUMS says (None:
    not listed)."""

    media_id: str
    source: str
    target: str | None
    sha256: str | None


@dataclass
class Merged:
    """What :func:`combine` makes of the folders: the rows of the package's three tables, its
    descriptor, its photos (see :class:`Photo`) and the notes (one line each) on what was not
    merged (a project, contributors or licences that differ between folders)."""

    descriptor: dict
    deployments: list[dict]
    media: list[dict]
    observations: list[dict]
    photos: list[Photo]
    notes: list[str]


@dataclass
class Summary:
    """What a merge wrote: ``folders`` merged from, ``deployments``, ``media`` and
    ``observations`` rows, ``photos`` written (copied or linked), their ``bytes`` (copied only),
    and the ``notes`` of :class:`Merged`."""

    folders: int
    deployments: int
    media: int
    observations: int
    photos: int
    bytes: int
    notes: list[str]


def is_remote(source: str) -> bool:
    """Whether ``source`` names an rclone remote (``name:path``) rather than a local folder: it
    begins with a remote's name and a colon, and no local file of that name exists."""
    return bool(_REMOTE.match(source)) and not os.path.exists(source)


def _join(root: str, *parts: str) -> str:
    """``root`` (a remote ``name:`` or ``name:path``) and ``parts`` joined with "/"."""
    path = posixpath.join(*[p for p in parts if p]) if any(parts) else ""
    if not path:
        return root
    return root + path if root.endswith((":", "/")) else f"{root}/{path}"


def _shown(root: str, name: str) -> str:
    return _join(str(root), name) if name else str(root)


# --- Reading the folders ----------------------------------------------------------------------


def _rows(text: str, table: str, where: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in REQUIRED_COLUMNS[table] if column not in (reader.fieldnames or ())]
    if missing:
        raise MergeRefused(f"{where}/{table}: has no {', '.join(missing)} column: not a Camtrap DP table")
    return list(reader)


def read_folder(name: str, files: dict[str, bytes], where: str) -> Folder:
    """The :class:`Folder` of the files read from a deployment folder (``files``: file name ->
    bytes, the :data:`~appliance.offload.TABLES` and, when there, SHA256SUMS).  ``where``: the
    folder as messages name it.  Raises :class:`~appliance.exc.MergeRefused` for a descriptor
    that is not JSON or not Camtrap DP 1.0, or a table without its key column."""
    try:
        descriptor = json.loads(files["datapackage.json"])
    except ValueError as exc:
        raise MergeRefused(f"{where}/datapackage.json: not JSON ({exc})") from None
    profile = descriptor.get("profile", "") if isinstance(descriptor, dict) else ""
    if "camtrap-dp/1.0" not in str(profile):
        raise MergeRefused(
            f"{where}/datapackage.json: its profile {profile!r} is not Camtrap DP 1.0: merge only the "
            "packages of camera traps"
        )
    tables = {}
    for table in TABLES[1:]:
        text = files[table].decode("utf-8-sig", errors="replace")
        tables[table] = _rows(text, table, where)
    sums = {}
    for line in files.get(SUMS_NAME, b"").decode("utf-8", errors="replace").splitlines():
        digest, sep, path = line.partition("  ")
        if sep and re.fullmatch(r"[0-9a-f]{64}", digest):
            sums[path.removeprefix("./")] = digest
    return Folder(name, descriptor, tables["deployments.csv"], tables["media.csv"],
                  tables["observations.csv"], sums)  # fmt: skip


class LocalSource:
    """The deployment folders under the local folder ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.remote = False
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "no such folder"
            raise MergeRefused(
                f"{self.root}: {what}: give the folder holding the traps' deployment folders "
                "(or an rclone remote, name:path)"
            )

    def folders(self) -> list[str]:
        """The deployment folders (paths relative to the root, "" for the root), in name order:
        each folder within :data:`FIND_DEPTH` levels holding the four tables.  A deployment
        folder's own subfolders, hidden folders and symbolic links to folders are not searched."""
        found = []

        def walk(path: Path, name: str, depth: int) -> None:
            if all((path / table).is_file() for table in TABLES):
                found.append(name)
                return
            if depth == FIND_DEPTH:
                return
            try:
                entries = sorted(os.scandir(path), key=lambda e: e.name)
            except OSError:
                return
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                    walk(
                        Path(entry.path), posixpath.join(name, entry.name) if name else entry.name, depth + 1
                    )

        walk(self.root, "", 0)
        return sorted(found)

    def read(self, names: list[str], progress=None) -> list[Folder]:
        folders = []
        for n, name in enumerate(names, 1):
            path = self.root / name
            files = {}
            for table in (*TABLES, SUMS_NAME):
                try:
                    files[table] = (path / table).read_bytes()
                except FileNotFoundError:
                    if table != SUMS_NAME:
                        raise
            folders.append(read_folder(name, files, _shown(self.root, name)))
            if progress:
                progress("reading", n, len(names))
        return folders

    def fetch(self, photos: list[Photo], work: Path, problems: list[str], progress=None) -> tuple[int, int]:
        """Copy ``photos`` into the package being built at ``work``, each hashed as it is read
        and checked against its SHA-256; a photo missing, unlisted or differing is a line of
        ``problems`` (and not kept).  Returns (photos, bytes) copied."""
        copied = size = 0
        for n, photo in enumerate(photos, 1):
            source = self.root / photo.source
            target = work / photo.target
            target.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256()
            try:
                with open(source, "rb") as inp, open(target, "wb") as out:
                    while chunk := inp.read(CHUNK_BYTES):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except FileNotFoundError:
                problems.append(f"{_shown(self.root, photo.source)}: missing (media.csv lists it)")
                target.unlink(missing_ok=True)
            else:
                copied += _check(photo, digest.hexdigest(), _shown(self.root, photo.source), problems)
            if progress:
                progress("copying", n, len(photos))
        return copied, size

    def link(self, photos: list[Photo], work: Path, problems: list[str]) -> int:
        """Make each photo a symbolic link to its file (an absolute path); a missing one is a
        line of ``problems``.  Returns the links made."""
        made = 0
        for photo in photos:
            source = (self.root / photo.source).absolute()
            if not source.is_file():
                problems.append(f"{source}: missing (media.csv lists it)")
                continue
            target = work / photo.target
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(source, target)
            made += 1
        return made


class RemoteSource:
    """The deployment folders under the rclone remote ``root`` (``"fleet:camtrap-2026/"``),
    read with ``rclone``.  Every call raises :class:`~appliance.exc.RemoteTrouble`."""

    def __init__(self, root: str, rclone: Rclone):
        self.root, self.rclone = root, rclone
        self.remote = True

    def folders(self) -> list[str]:
        """As :meth:`LocalSource.folders`, from one listing (``rclone lsjson -R``) of the files
        named as the tables, down to :data:`FIND_DEPTH` levels."""
        names = ",".join((*TABLES, SUMS_NAME))
        said = self.rclone.run(
            ["lsjson", "-R", "--files-only", "--max-depth", str(FIND_DEPTH + 1), "--include",
             f"{{{names}}}", self.root],
            timeout_s=REMOTE_LIST_TIMEOUT_S,
        )  # fmt: skip
        try:
            entries = json.loads(said or b"[]")
            paths = [entry["Path"] for entry in entries]
        except (ValueError, KeyError, TypeError):
            raise MergeRefused(f"{self.root}: rclone lsjson gave no listing") from None
        held: dict[str, set[str]] = {}
        for path in paths:
            folder, _, name = path.rpartition("/")
            held.setdefault(folder, set()).add(name)
        found = [folder for folder, names in held.items() if set(TABLES) <= names]
        # A deployment folder's own subfolders are not searched.
        return sorted(f for f in found if not any(f.startswith(o + "/") or o == "" for o in found if o != f))

    def read(self, names: list[str], progress=None) -> list[Folder]:
        wanted = [posixpath.join(name, table) for name in names for table in (*TABLES, SUMS_NAME)]
        with tempfile.TemporaryDirectory(prefix="appliance-fleet-") as staging:
            self.rclone.copy(self.root, staging, wanted, timeout_s=REMOTE_LIST_TIMEOUT_S)
            local = LocalSource(Path(staging))
            folders = local.read(names, progress)
        return folders

    def fetch(self, photos: list[Photo], work: Path, problems: list[str], progress=None) -> tuple[int, int]:
        """As :meth:`LocalSource.fetch`: copied with rclone in batches of :data:`REMOTE_BATCH`
        from each folder, then each hashed and checked."""
        by_place: dict[tuple[str, str], list[Photo]] = {}
        for photo in photos:
            key = (posixpath.dirname(photo.source), posixpath.dirname(photo.target))
            by_place.setdefault(key, []).append(photo)
        copied = size = done = 0
        for (source, target), group in by_place.items():
            (work / target).mkdir(parents=True, exist_ok=True)
            for start in range(0, len(group), REMOTE_BATCH):
                batch = group[start : start + REMOTE_BATCH]
                self.rclone.copy(
                    _join(self.root, source),
                    os.fspath(work / target),
                    [posixpath.basename(p.source) for p in batch],
                    timeout_s=REMOTE_BATCH_TIMEOUT_S + REMOTE_PHOTO_TIMEOUT_S * len(batch),
                )
                for photo in batch:
                    landed = work / target / posixpath.basename(photo.source)
                    where = _join(self.root, photo.source)
                    done += 1
                    if not landed.is_file():
                        problems.append(f"{where}: missing (media.csv lists it)")
                        continue
                    if landed.name != posixpath.basename(photo.target):
                        landed = landed.rename(work / photo.target)
                    with open(landed, "rb") as f:
                        digest = hashlib.file_digest(f, "sha256").hexdigest()
                    size += landed.stat().st_size
                    if _check(photo, digest, where, problems):
                        copied += 1
                if progress:
                    progress("copying", done, len(photos))
        return copied, size


def _check(photo: Photo, digest: str, where: str, problems: list[str]) -> bool:
    if photo.sha256 is None:
        problems.append(f"{where}: not in its folder's {SUMS_NAME}: cannot be checked")
    elif digest != photo.sha256:
        problems.append(f"{where}: its SHA-256 {digest} is not the {photo.sha256} {SUMS_NAME} lists")
    else:
        return True
    return False


# --- Merging the tables -----------------------------------------------------------------------


def _moment(stamp: str) -> datetime.datetime:
    try:
        return export.parse_time(stamp)
    except ValueError:
        raise MergeRefused(f"{stamp!r} is not an ISO 8601 time: not a Camtrap DP table") from None


def _same_value(key: str, a: str, b: str) -> bool:
    if key in ("latitude", "longitude"):
        try:
            return float(a) == float(b)
        except ValueError:
            pass
    return a == b


def _differing(a: dict, b: dict, keys: Iterable[str]) -> list[str]:
    return [
        f"{key} {a.get(key, '')!r} / {b.get(key, '')!r}"
        for key in keys
        if not _same_value(key, a.get(key, ""), b.get(key, ""))
    ]


def _in_range(stamp: str, since, until) -> bool:
    moment = _moment(stamp)
    return (since is None or moment >= since) and (until is None or moment < until)


def combine(
    folders: list[Folder],
    *,
    media: str = "copy",
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
    now: datetime.datetime | None = None,
) -> Merged:
    """Merge the folders' tables (see the module's docstring) into one package's, ``folders``
    in the order whose first gives the project and contributors.  Photos are placed as ``media``
    says.  Raises :class:`~appliance.exc.MergeRefused`, naming both folders, for a deployment or
    a photo or an event two folders hold differently, and for a row naming a deployment its
    folder lacks."""
    deployments: dict[str, dict] = {}
    deployment_from: dict[str, str] = {}
    media_rows: dict[str, dict] = {}
    photo_of: dict[str, Photo] = {}
    media_from: dict[str, str] = {}
    events: dict[str, dict] = {}
    event_from: dict[str, str] = {}
    for folder in folders:
        where = folder.name or "."
        own = set()
        for row in folder.deployments:
            dep = row["deploymentID"]
            own.add(dep)
            if dep not in deployments:
                deployments[dep], deployment_from[dep] = dict(row), where
                continue
            kept = deployments[dep]
            differ = _differing(kept, row, SAME_PLACE)
            if differ:
                raise MergeRefused(
                    f"deployment {dep!r} is in {deployment_from[dep]} and {where} with a different "
                    f"{', '.join(differ)}: two traps share that deployment ID; give each its own "
                    "deployment_id (or camera_id), or merge their folders separately"
                )
            kept["deploymentStart"] = min(kept["deploymentStart"], row["deploymentStart"], key=_moment)
            kept["deploymentEnd"] = max(kept["deploymentEnd"], row["deploymentEnd"], key=_moment)
            if row.get("timestampIssues") == "true":
                kept["timestampIssues"] = "true"
        for row in folder.media:
            media_id, dep = row["mediaID"], row.get("deploymentID", "")
            if dep not in own:
                raise MergeRefused(
                    f"{where}/media.csv: media {media_id} names deployment {dep!r}, which its "
                    "deployments.csv lacks: not a whole package"
                )
            path = row["filePath"].removeprefix("./")
            if "://" not in path and (path.startswith(("/", "~")) or ".." in path.split("/")):
                raise MergeRefused(f"{where}/media.csv: media {media_id} has filePath {path!r}, not a "
                                   "path inside its folder: not a Camtrap DP table")  # fmt: skip
            sha = folder.sums.get(path)
            if media_id in media_rows:
                kept = media_rows[media_id]
                # A photo protected on the trap between two sticks is the same photo: a favourite.
                differ = _differing(kept, row, [key for key in export.MEDIA_FIELDS if key != "favorite"])
                if row.get("favorite") == "true":
                    kept["favorite"] = "true"
                other = photo_of[media_id].sha256
                if not differ and sha and other and sha != other:
                    differ = [f"photo (SHA-256 {other[:12]}... / {sha[:12]}...)"]
                if differ:
                    raise MergeRefused(
                        f"media {media_id} is in {media_from[media_id]} and {where} with a different "
                        f"{', '.join(differ)}: the same photo ID for two photos; merge those folders "
                        "separately"
                    )
                continue
            media_rows[media_id], media_from[media_id] = dict(row), where
            photo_of[media_id] = Photo(media_id, posixpath.join(folder.name, path), None, sha)
        for row in folder.observations:
            event, dep = row["observationID"], row.get("deploymentID", "")
            if dep not in own:
                raise MergeRefused(
                    f"{where}/observations.csv: observation {event} names deployment {dep!r}, which "
                    "its deployments.csv lacks: not a whole package"
                )
            if event not in events:
                events[event], event_from[event] = dict(row), where
                continue
            kept = events[event]
            others = [f for f in export.OBSERVATION_FIELDS if f not in ("eventStart", "eventEnd")]
            differ = _differing(kept, row, others)
            if differ:
                raise MergeRefused(
                    f"observation {event} is in {event_from[event]} and {where} with a different "
                    f"{', '.join(differ)}; merge those folders separately"
                )
            # An event cut in two by a stick is one event again.
            kept["eventStart"] = min(kept["eventStart"], row["eventStart"], key=_moment)
            kept["eventEnd"] = max(kept["eventEnd"], row["eventEnd"], key=_moment)

    kept_media = [row for row in media_rows.values() if _in_range(row["timestamp"], since, until)]
    if not kept_media:
        ranged = since is not None or until is not None
        raise MergeRefused("no photos in the range given: nothing to merge" if ranged else
                           "the deployment folders list no photos: nothing to merge")  # fmt: skip
    observations = list(events.values())
    if since is not None or until is not None:
        stamps: dict[str, list[datetime.datetime]] = {}
        for row in kept_media:
            stamps.setdefault(row["deploymentID"], []).append(_moment(row["timestamp"]))
        kept_ids = {row["mediaID"] for row in kept_media}

        def has_media(row: dict) -> bool:
            if row.get("mediaID"):
                return row["mediaID"] in kept_ids
            first, last = _moment(row["eventStart"]), _moment(row["eventEnd"])
            return any(first <= t <= last for t in stamps.get(row["deploymentID"], ()))

        observations = [row for row in observations if has_media(row)]
        deployments = {dep: row for dep, row in deployments.items() if dep in stamps}

    photos = []
    for row in kept_media:
        photo = photo_of[row["mediaID"]]
        path = row.get("filePath", "")
        if "://" in path:  # a URL: the photo is elsewhere already
            continue
        if media == "none":
            row["filePath"] = photo.source
            continue
        if not _FILE_ID.fullmatch(row["mediaID"]):
            raise MergeRefused(f"{media_from[row['mediaID']]}/media.csv: mediaID {row['mediaID']!r} cannot "
                               "name a file: merge with --media none")  # fmt: skip
        suffix = posixpath.splitext(path)[1] or ".jpg"
        photo.target = f"media/{folder_name(row['deploymentID'])}/{row['mediaID']}{suffix}"
        row["filePath"] = photo.target
        photos.append(photo)
    descriptor, notes = _descriptor(folders, list(deployments.values()), kept_media, now)
    return Merged(descriptor, list(deployments.values()), kept_media, observations, photos, notes)


def _descriptor(folders: list[Folder], deployments: list[dict], media: list[dict], now) -> tuple[dict, list]:
    first = folders[0].descriptor
    notes = []
    for key in ("project", "contributors", "licenses"):
        mine = _comparable(first.get(key), key)
        differ = [f.name or "." for f in folders[1:] if _comparable(f.descriptor.get(key), key) != mine]
        if differ:
            notes.append(
                f"{key}: {', '.join(differ)} differ from {folders[0].name or '.'}; the package has "
                f"{folders[0].name or '.'}'s"
            )
    project = dict(first.get("project") or {})
    methods = sorted({row["captureMethod"] for row in media if row.get("captureMethod")})
    project["captureMethod"] = methods or project.get("captureMethod") or ["activityDetection"]
    levels = {
        level for f in folders for level in (f.descriptor.get("project") or {}).get("observationLevel", [])
    }
    project["observationLevel"] = sorted(levels) or ["event"]
    try:
        points = sorted({(float(row["longitude"]), float(row["latitude"])) for row in deployments})
    except ValueError:
        raise MergeRefused(
            "a deployment's latitude or longitude is not a number: not a Camtrap DP table"
        ) from None
    if len(points) == 1:
        spatial = {"type": "Point", "coordinates": list(points[0])}
    else:
        west, east = min(p[0] for p in points), max(p[0] for p in points)
        south, north = min(p[1] for p in points), max(p[1] for p in points)
        ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
        spatial = {"type": "Polygon", "bbox": [west, south, east, north], "coordinates": [ring]}
    starts = [_moment(row["deploymentStart"]) for row in deployments]
    ends = [_moment(row["deploymentEnd"]) for row in deployments]
    created = (now or datetime.datetime.now(datetime.UTC)).astimezone(datetime.UTC).replace(microsecond=0)
    taxonomic = []
    for f in folders:
        for taxon in f.descriptor.get("taxonomic") or []:
            if taxon not in taxonomic:
                taxonomic.append(taxon)
    title = first.get("title") or project.get("title") or "fleet"
    package = {
        "resources": export.resources(),
        "profile": f"{export.SCHEMA_URL}camtrap-dp-profile.json",
        "name": export.package_name(title),
        "created": created.isoformat(),
    }
    package |= {key: value for key, value in first.items() if key not in package}
    package |= {
        "project": project,
        "spatial": spatial,
        "temporal": {
            "start": min(s.date() for s in starts).isoformat() if starts else created.date().isoformat(),
            "end": max(e.date() for e in ends).isoformat() if ends else created.date().isoformat(),
        },
        "taxonomic": taxonomic,
    }
    return package, notes


def _comparable(value, key: str):
    if key == "project" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in ("captureMethod", "observationLevel")}
    return value


# --- Writing the package ----------------------------------------------------------------------


def _check_outdir(outdir: Path) -> None:
    try:
        export._check_outdir(outdir)
    except ExportError as exc:
        raise MergeRefused(str(exc)) from None


def merge(
    source: str | Path,
    outdir: Path,
    *,
    media: str = "copy",
    since: datetime.datetime | None = None,
    until: datetime.datetime | None = None,
    rclone: Rclone | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    now: datetime.datetime | None = None,
) -> Summary:
    """Merge every deployment folder under ``source`` (a local folder, or an rclone remote
    ``name:path`` read with ``rclone``, default ``Rclone()``) into one Camtrap DP package in
    ``outdir`` (new or empty), as the module's docstring says.  ``progress(stage, done, total)``
    is called as folders are read (stage ``"reading"``) and photos copied (``"copying"``).

    Returns a :class:`Summary`.  Raises :class:`~appliance.exc.MergeRefused` (nothing written)
    for a source that is not there or holds no deployment folder, ``media="link"`` from a
    remote, ``outdir`` not a new or empty folder, and what :func:`combine` refuses;
    :class:`~appliance.exc.MergeFailed` (nothing written) when photos are missing or differ from
    their SHA256SUMS; :class:`~appliance.exc.RemoteTrouble` when the remote cannot be read;
    ``OSError`` when writing fails (the partial package is removed)."""
    if media not in MEDIA_MODES:
        raise MergeRefused(f"media: {media!r} must be one of {', '.join(MEDIA_MODES)}")
    outdir = Path(outdir)
    _check_outdir(outdir)
    if isinstance(source, str) and is_remote(source):
        if media == "link":
            raise MergeRefused(
                f"{source}: --media link needs a local folder (links cannot point into a remote): "
                "use --media copy, or none"
            )
        place = RemoteSource(source, rclone or Rclone())
    else:
        place = LocalSource(Path(source))
    names = place.folders()
    if not names:
        raise MergeRefused(
            f"{source}: no deployment folder (one holding {', '.join(TABLES)}) within {FIND_DEPTH} levels: "
            "give the folder (or remote) the traps offload to"
        )
    folders = place.read(names, progress)
    merged = combine(folders, media=media, since=since, until=until, now=now)
    outdir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", suffix=".partial", dir=outdir.parent))
    try:
        problems: list[str] = []
        photos = size = 0
        if media == "copy":
            photos, size = place.fetch(merged.photos, work, problems, progress)
        elif media == "link":
            photos = place.link(merged.photos, work, problems)
        if problems:
            raise MergeFailed(problems)
        tables = {
            "deployments.csv": (export.DEPLOYMENT_FIELDS, merged.deployments),
            "media.csv": (export.MEDIA_FIELDS, merged.media),
            "observations.csv": (export.OBSERVATION_FIELDS, merged.observations),
        }
        for name, (fields, rows) in tables.items():
            with open(work / name, "wb") as out:
                out.writelines(
                    export.csv_chunks(fields, [{f: row.get(f, "") for f in fields} for row in rows])
                )
        (work / "datapackage.json").write_text(json.dumps(merged.descriptor, indent=2) + "\n")
        export.publish_folder(work, outdir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Summary(len(folders), len(merged.deployments), len(merged.media), len(merged.observations),
                   photos, size, merged.notes)  # fmt: skip
