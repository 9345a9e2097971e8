"""Activity at a glance: the numbers behind the status page's three plots and ``GET /api/activity``
(one computation for both), and the plots' geometry, drawn as SVG by ``views/activity.tpl``.

- Captures per hour over the last 24 hours (:data:`HOURLY_HOURS` UTC hours, the current one
  included, labelled in the trap's zone), each bar stacked by trigger.
- The diel activity: captures by hour of day in the trap's zone over the last :data:`DIEL_DAYS`
  days, each bar stacked by trigger.
- The free space of the data directory's filesystem over the last :data:`DISK_DAYS` days: the
  least in each hour of the samples the main loop records every :data:`DISK_SAMPLE_INTERVAL_S`
  (:func:`sample_disk`).

Everything is read from the store's summary tables (:meth:`IndexReader.activity
<appliance.store.IndexReader.activity>`, migration m011), never from ``captures``: the plots cost
the same at 1,000 and 1,000,000 captures.  They count the captures *taken*, by the time each was
stamped with (``captured_at``): cleanup deleting a capture later does not lower them.
"""

import dataclasses
import datetime
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.store import TRIGGERS, CaptureStore, IndexReader
from hw import system

HOURLY_HOURS = 24
DIEL_DAYS = 7
DISK_DAYS = 7
# Seconds between two samples of the free space (a job of the main loop): 672 in a week.
DISK_SAMPLE_INTERVAL_S = 900
# What the counts are, for the page and the API.
COUNTED = "captures taken, by the time each was stamped with; a later deletion by cleanup does not lower them"
# Bar colours by trigger: the Okabe-Ito palette, told apart with the common colour blindnesses.
COLOURS = {
    "motion": "#0072b2",
    "button": "#e69f00",
    "timelapse": "#009e73",
    "manual": "#cc79a7",
    "import": "#56b4e9",
    "unknown": "#999999",
}
HOUR_S = 3600


@dataclass(frozen=True)
class HourCount:
    """Captures in one bar: ``hour``, the UTC start of the hour (aware) for the last 24 hours, or
    the hour of day (0-23, in the zone) for the diel plot; ``by_trigger``, ``{trigger: captures}``
    of the triggers with captures, in the order of :data:`~appliance.store.TRIGGERS`."""

    hour: datetime.datetime | int
    by_trigger: dict[str, int]

    @property
    def captures(self) -> int:
        """Captures in the bar, all triggers."""
        return sum(self.by_trigger.values())


@dataclass(frozen=True)
class DiskHour:
    """The data directory's filesystem in the UTC hour that starts at ``hour`` (aware): the least
    free space sampled in it and the filesystem's size, in bytes."""

    hour: datetime.datetime
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Activity:
    """What the plots show at ``now`` (aware, UTC) in the zone ``zone``:

    ``hourly``: :data:`HOURLY_HOURS` :class:`HourCount`, one per UTC hour, oldest first, the last
    the hour ``now`` is in; ``diel``: 24, hours of day 0 to 23 in ``zone``, over the
    ``DIEL_DAYS * 24`` UTC hours ending with the current one; ``disk``: the hours with disk
    samples in the last :data:`DISK_DAYS` days, oldest first (the first may be partly before);
    ``any_captures``: whether a capture was ever counted.
    """

    now: datetime.datetime
    zone: datetime.tzinfo
    hourly: tuple[HourCount, ...]
    diel: tuple[HourCount, ...]
    disk: tuple[DiskHour, ...]
    any_captures: bool

    @property
    def zone_name(self) -> str:
        """The zone's name now (``"CET"``, ``"UTC+05:30"``)."""
        return self.now.astimezone(self.zone).tzname() or str(self.zone)

    def to_json(self) -> dict:
        """The JSON of ``GET /api/activity`` (docs/web-api.md)."""
        hourly_since = self.hourly[0].hour
        return {
            "now": _iso(self.now),
            "zone": self.zone_name,
            "counted": COUNTED,
            "any_captures": self.any_captures,
            "hourly": {
                "since": _iso(hourly_since),
                "until": _iso(self.hourly[-1].hour + datetime.timedelta(hours=1)),
                "hours": [
                    {"start": _iso(h.hour), "captures": h.captures, "by_trigger": h.by_trigger}
                    for h in self.hourly
                ],
            },
            "diel": {
                "since": _iso(self.hourly[-1].hour - datetime.timedelta(hours=DIEL_DAYS * 24 - 1)),
                "until": _iso(self.hourly[-1].hour + datetime.timedelta(hours=1)),
                "hours": [
                    {"hour": h.hour, "captures": h.captures, "by_trigger": h.by_trigger} for h in self.diel
                ],
            },
            "disk": {
                "since": _iso(self.now - datetime.timedelta(days=DISK_DAYS)),
                "interval_s": DISK_SAMPLE_INTERVAL_S,
                "hours": [
                    {"start": _iso(d.hour), "free_bytes": d.free_bytes, "total_bytes": d.total_bytes}
                    for d in self.disk
                ],
            },
        }


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat(timespec="seconds")


def read_activity(reader: IndexReader, now: datetime.datetime, zone: datetime.tzinfo) -> Activity:
    """The :class:`Activity` at ``now`` (aware) in ``zone`` (a ``datetime.tzinfo``: the trap's
    local zone), from ``reader``'s summary tables: two indexed ranges of at most
    ``DIEL_DAYS * 24 * len(TRIGGERS)`` hour rows and a week of disk samples, whatever the size of
    the index.

    The diel plot puts each UTC hour in the hour of day, in ``zone``, its start falls in: in a
    zone whose offset is not whole hours (``+05:30``), the captures of 05:30 to 06:29 local time
    count for 05:00, those of 06:30 to 07:29 for 06:00.  Raises ``sqlite3.Error`` when the index
    cannot be read.
    """
    now = now.astimezone(datetime.UTC)
    current = now.replace(minute=0, second=0, microsecond=0)
    week = [current - datetime.timedelta(hours=n) for n in range(DIEL_DAYS * 24 - 1, -1, -1)]
    # One read: the week's hours, and the disk samples since now - DISK_DAYS (the hours before the
    # week's first, if any, are left out below).
    read = reader.activity(
        min(week[0], now - datetime.timedelta(days=DISK_DAYS)), current + datetime.timedelta(hours=1)
    )
    counts: dict[int, dict[str, int]] = {}
    for hour_start_s, trigger, captures in read["hours"]:
        counts.setdefault(hour_start_s, {})[trigger] = captures
    hourly = tuple(HourCount(h, _ordered(counts.get(int(h.timestamp()), {}))) for h in week[-HOURLY_HOURS:])
    diel: list[dict[str, int]] = [{} for _ in range(24)]
    for hour in week:
        bucket = diel[hour.astimezone(zone).hour]
        for trigger, captures in counts.get(int(hour.timestamp()), {}).items():
            bucket[trigger] = bucket.get(trigger, 0) + captures
    disk = tuple(
        DiskHour(datetime.datetime.fromtimestamp(hour, datetime.UTC), free, total)
        for hour, free, total in read["disk_hours"]
    )
    return Activity(
        now=now,
        zone=zone,
        hourly=hourly,
        diel=tuple(HourCount(h, _ordered(bucket)) for h, bucket in enumerate(diel)),
        disk=disk,
        any_captures=read["any"],
    )


def _ordered(by_trigger: dict[str, int]) -> dict[str, int]:
    known = [t for t in TRIGGERS if t in by_trigger]
    return {t: by_trigger[t] for t in known + sorted(set(by_trigger) - set(known))}


def sample_disk(
    store: CaptureStore,
    now: Callable[[], object],
    disk_usage: Callable[[Path], object] = system.disk_usage,
) -> bool:
    """The main loop's job every :data:`DISK_SAMPLE_INTERVAL_S`: record the free space of the
    store's filesystem (:meth:`CaptureStore.record_disk_sample
    <appliance.store.CaptureStore.record_disk_sample>`, which prunes the old samples) at
    ``now()``, a :class:`~hw.clock.Timestamp` (the appliance's
    :meth:`~appliance.clocktrust.TrustedClock.now`).  Nothing is recorded while the clock is not
    trusted (the plot is by wall-clock time) or the filesystem cannot be read
    (``disk_usage(path)`` None).  Returns whether a sample was recorded."""
    stamp = now()
    if not stamp.clock_synced:
        return False
    usage = disk_usage(store.data_dir)
    if usage is None:
        return False
    store.record_disk_sample(stamp.wall, free_bytes=usage.free, total_bytes=usage.total)
    return True


# --- The plots' geometry, in the SVG's user units (views/activity.tpl draws it) -----------------

WIDTH, HEIGHT = 360, 172
LEFT, RIGHT, TOP, BOTTOM = 34, 6, 8, 24
# User units per CSS pixel are about WIDTH / 344 on a 360 px phone (the page's margins): 12 is
# about 11.5 px there.
FONT_SIZE = 12


@dataclass(frozen=True)
class Rect:
    """A rectangle of the plot: its corner, size, fill colour and the trigger it stands for."""

    x: float
    y: float
    width: float
    height: float
    fill: str
    trigger: str


@dataclass(frozen=True)
class Bar:
    """One bar: its ``title`` (the tooltip and what a screen reader reads, with the numbers), its
    stacked ``rects``, the first trigger at the bottom, and the slot it stands in (``x``,
    ``width``: the whole height of the slot shows the title, an empty bar's too)."""

    title: str
    rects: tuple[Rect, ...]
    x: float
    width: float


@dataclass(frozen=True)
class Plot:
    """One plot, ready to draw: ``name`` (an id for the page), ``heading``, ``summary`` (the SVG's
    own title, with the numbers), ``empty`` (a message drawn instead of the data, or ""),
    ``bars`` (bar plots), ``lines`` and ``areas`` (``points`` strings, line plots), the axes'
    ``y_ticks`` and ``x_ticks`` (``(position, label)``), ``legend`` (``(label, colour)``) and
    ``note`` (a line under it)."""

    name: str
    heading: str
    summary: str
    empty: str = ""
    bars: tuple[Bar, ...] = ()
    lines: tuple[str, ...] = ()
    areas: tuple[str, ...] = ()
    y_ticks: tuple[tuple[float, str], ...] = ()
    x_ticks: tuple[tuple[float, str], ...] = ()
    legend: tuple[tuple[str, str], ...] = ()
    note: str = ""
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM
    font_size: int = FONT_SIZE


def plots(activity: Activity) -> tuple[Plot, Plot, Plot]:
    """The three plots of ``activity``: the last 24 hours, the diel activity and the free space."""
    zone = activity.zone
    hourly = _bar_plot(
        "activity-hourly",
        "Captures per hour, last 24 hours",
        activity.hourly,
        lambda h: f"{h.hour.astimezone(zone):%a %H:%M}",
        lambda i, h: f"{h.hour.astimezone(zone):%H:%M}" if h.hour.astimezone(zone).hour % 6 == 0 else "",
        "in the last 24 hours",
        activity.any_captures,
    )
    diel = _bar_plot(
        "activity-diel",
        f"Captures by hour of day, last {DIEL_DAYS} days ({activity.zone_name})",
        activity.diel,
        lambda h: f"{h.hour:02d}:00 to {(h.hour + 1) % 24:02d}:00",
        lambda i, h: f"{h.hour:02d}:00" if i % 6 == 0 else "",
        f"in the last {DIEL_DAYS} days",
        activity.any_captures,
    )
    return hourly, diel, _disk_plot(activity)


def _bar_plot(name, heading, counts, bar_label, tick_label, span, any_captures) -> Plot:
    total = sum(h.captures for h in counts)
    by_trigger: dict[str, int] = {}
    for h in counts:
        for trigger, n in h.by_trigger.items():
            by_trigger[trigger] = by_trigger.get(trigger, 0) + n
    by_trigger = _ordered(by_trigger)
    if not total:
        empty = "No captures yet" if not any_captures else f"No captures {span}"
        return Plot(name, heading, f"{heading}: {empty.lower()}.", empty=empty)
    top = _nice(max(h.captures for h in counts))
    plot = Plot(name, heading, "")
    slot = (plot.right - plot.left) / len(counts)
    scale = (plot.bottom - plot.top) / top
    bars, x_ticks = [], []
    for i, h in enumerate(counts):
        x, y, rects = plot.left + i * slot + 1, plot.bottom, []
        for trigger, n in h.by_trigger.items():
            rects.append(Rect(round(x, 1), round(y - n * scale, 1), round(slot - 2, 1), round(n * scale, 1),
                              COLOURS.get(trigger, COLOURS["unknown"]), trigger))  # fmt: skip
            y -= n * scale
        detail = f" ({', '.join(f'{t} {n}' for t, n in h.by_trigger.items())})" if h.captures else ""
        title = f"{bar_label(h)}: {_captures(h.captures)}{detail}"
        bars.append(Bar(title, tuple(rects), round(plot.left + i * slot, 1), round(slot, 1)))
        if label := tick_label(i, h):
            x_ticks.append((round(plot.left + (i + 0.5) * slot, 1), label))
    busiest = max(counts, key=lambda h: h.captures)
    summary = (
        f"{heading}: {_captures(total)} {span} "
        f"({', '.join(f'{t} {n}' for t, n in by_trigger.items())}); "
        f"the most, {busiest.captures}, {bar_label(busiest)}."
    )
    y_ticks = [(plot.bottom, "0"), (plot.top, str(top))]
    if top % 2 == 0:
        y_ticks.insert(1, (round((plot.top + plot.bottom) / 2, 1), str(top // 2)))
    legend = tuple((f"{t} {n}", COLOURS.get(t, COLOURS["unknown"])) for t, n in by_trigger.items())
    return dataclasses.replace(
        plot, summary=summary, bars=tuple(bars), y_ticks=tuple(y_ticks), x_ticks=tuple(x_ticks),
        legend=legend,
    )  # fmt: skip


def _disk_plot(activity: Activity) -> Plot:
    name, heading = "activity-disk", f"Free space in GB, last {DISK_DAYS} days"
    note = "The least free space of each hour, sampled while running with a trusted clock."
    if not activity.disk:
        empty = "No samples yet"
        return Plot(name, heading, f"{heading}: {empty.lower()}.", empty=empty, note=note)
    plot = Plot(name, heading, "")
    start = activity.now - datetime.timedelta(days=DISK_DAYS)
    top = max(d.total_bytes for d in activity.disk) or 1
    x_scale = (plot.right - plot.left) / (DISK_DAYS * 86400)
    y_scale = (plot.bottom - plot.top) / top

    def point(d: DiskHour) -> tuple[float, float]:
        middle = (d.hour - start).total_seconds() + HOUR_S / 2
        x = min(plot.right, max(plot.left, plot.left + middle * x_scale))
        return round(x, 1), round(plot.bottom - d.free_bytes * y_scale, 1)

    # An hour without a sample (the appliance was off, or its clock not trusted) breaks the line.
    runs: list[list[DiskHour]] = []
    for d in activity.disk:
        if not runs or (d.hour - runs[-1][-1].hour).total_seconds() > HOUR_S:
            runs.append([])
        runs[-1].append(d)
    lines, areas = [], []
    for run in runs:
        points = [point(d) for d in run]
        if len(points) == 1:  # an hour alone: a short dash, so that it shows
            (x, y) = points[0]
            points = [(round(x - 1, 1), y), (round(x + 1, 1), y)]
        lines.append(" ".join(f"{x},{y}" for x, y in points))
        areas.append(f"{points[0][0]},{plot.bottom} " + lines[-1] + f" {points[-1][0]},{plot.bottom}")
    zone = activity.zone
    x_ticks = []
    midnight = start.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    for day in range(1, DISK_DAYS + 1):
        tick = midnight + datetime.timedelta(days=day)  # wall-clock arithmetic: midnight in the zone
        x = plot.left + (tick - start).total_seconds() * x_scale
        if plot.left <= x <= plot.right - 10:
            x_ticks.append((round(x, 1), f"{tick:%a}"))
    last, lowest = activity.disk[-1], min(activity.disk, key=lambda d: d.free_bytes)
    summary = (
        f"{heading}: {_gb(last.free_bytes)} free of {_gb(last.total_bytes)} at "
        f"{last.hour.astimezone(zone):%a %H:00}; the least, {_gb(lowest.free_bytes)}, at "
        f"{lowest.hour.astimezone(zone):%a %H:00}."
    )
    y_ticks = ((plot.bottom, "0"), (round((plot.top + plot.bottom) / 2, 1), f"{top / 2e9:.0f}"),
               (plot.top, f"{top / 1e9:.0f}"))  # fmt: skip
    return dataclasses.replace(
        plot, summary=summary, lines=tuple(lines), areas=tuple(areas), y_ticks=y_ticks,
        x_ticks=tuple(x_ticks), legend=(("free", COLOURS["motion"]),), note=note,
    )  # fmt: skip


def _nice(value: int) -> int:
    """The least of 1, 2, 3, 4, 5, 6, 8, 10, 20, 30, ... at or above ``value`` (at least 1): the
    top of a bar plot's axis, a round number that leaves little of the plot empty."""
    step = 1
    while True:
        for factor in (1, 2, 3, 4, 5, 6, 8):
            if step * factor >= value:
                return step * factor
        step *= 10


def _captures(n: int) -> str:
    return f"{n} capture{'' if n == 1 else 's'}"


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"
