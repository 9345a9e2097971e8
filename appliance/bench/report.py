"""The figures against their targets (the verdicts), and the table ``appliance bench`` prints."""

from appliance.bench import plan
from appliance.bench.cleanup import OFFLOAD_CHOICES


def verdict(value: float | None, compare: str, target: float) -> dict:
    """One figure against its target: ``{"value", "compare" (">=" or "<="), "target", "verdict"}``,
    the verdict ``"PASS"`` or ``"MISS"`` (``"n/a"`` when the value could not be measured)."""
    if value is None:
        result = "n/a"
    else:
        result = "PASS" if (value >= target if compare == ">=" else value <= target) else "MISS"
    return {"value": value, "compare": compare, "target": target, "verdict": result}


def verdicts(figures: dict) -> dict:
    """Every figure that has a target, as :func:`verdict` gives it, by name."""
    memory = figures["memory"]
    growth = memory["growth_bytes"]
    return {
        "ingest_ratio": verdict(figures["ingest"]["ratio"], ">=", plan.INGEST_RATIO_TARGET),
        "thumbnail_speedup_vs_naive_jpeg": verdict(
            figures["thumbnail_speedup_vs_naive"]["jpeg"], ">=", plan.THUMBNAIL_SPEEDUP_TARGET["jpeg"]
        ),
        "thumbnail_speedup_vs_naive_frame": verdict(
            figures["thumbnail_speedup_vs_naive"]["frame"], ">=", plan.THUMBNAIL_SPEEDUP_TARGET["frame"]
        ),
        "thumbnail_vs_decode_floor": verdict(
            figures["thumbnail_vs_decode_floor"], "<=", plan.THUMBNAIL_FLOOR_TARGET
        ),
        "latency_p99_ratio": verdict(figures["latency_ratio"]["p99"], "<=", plan.LATENCY_P99_RATIO_TARGET),
        "recovery_latency_ratio": verdict(
            figures["recovery_latency_ratio"], "<=", plan.RECOVERY_LATENCY_TARGET
        ),
        **{
            f"mqtt_latency_ratio_{way}": verdict(ratio, "<=", plan.MQTT_LATENCY_RATIO_MAX)
            for way, ratio in figures["mqtt_latency_ratio"].items()
        },
        "peak_rss_mib": verdict(
            round(memory["peak_rss_bytes"] / 2**20, 1), "<=", plan.PEAK_RSS_TARGET_BYTES / 2**20
        ),
        "rss_growth_mib": verdict(
            None if growth is None else round(growth / 2**20, 2), "<=", plan.RSS_GROWTH_TARGET_BYTES / 2**20
        ),
        "startup_ratio": verdict(figures["startup_ratio"], "<=", plan.STARTUP_RATIO_TARGET),
        "captures_per_minute": verdict(
            figures["field"]["captures_per_minute"], ">=", figures["field"]["rate_limit_per_minute"]
        ),
        "select_ratio_1m_vs_1k": verdict(figures["select_ratio_1m_vs_1k"], "<=", plan.SELECT_RATIO_TARGET),
        "select_offloaded_ratio_1m_vs_1k": verdict(
            figures["select_offloaded_ratio_1m_vs_1k"], "<=", plan.OFFLOAD_SELECT_RATIO_TARGET
        ),
        "select_pending_ratio_1m_vs_1k": verdict(
            figures["select_pending_ratio_1m_vs_1k"], "<=", plan.OFFLOAD_SELECT_RATIO_TARGET
        ),
        "import_ratio": verdict(figures["transfer"]["import_ratio"], ">=", plan.IMPORT_RATIO_TARGET),
        "zip_ratio": verdict(figures["transfer"]["zip_ratio"], "<=", plan.EXPORT_RATIO_TARGET),
        "offload_ratio": verdict(figures["offload"]["ratio"], ">=", plan.OFFLOAD_RATIO_TARGET),
        "remote_offload_ratio": verdict(
            figures["remote_offload"]["ratio"], ">=", plan.REMOTE_OFFLOAD_RATIO_TARGET
        ),
        "zip_peak_mib": verdict(
            round(figures["transfer"]["zip_peak_bytes"] / 2**20, 2),
            "<=",
            plan.EXPORT_PEAK_TARGET_BYTES / 2**20,
        ),
    }


def _line(label: str, value: str, name: str, figures: dict) -> None:
    check = figures["verdicts"].get(name)
    target = f"{check['compare']} {check['target']:g}" if check else "no target"
    print(f"  {label:<54} {value:>12}   {target:<10} {check['verdict'] if check else ''}")


def print_table(figures: dict, photo_name: str) -> None:
    """The figures as the table of ``appliance bench``: the capture path, import and export, one
    line per figure with its target and verdict; then cleanup's and the web's own tables; then how
    long the run took."""
    width, height = figures["ingest"]["photo_size_px"]
    print(
        f"capture path: {photo_name}, {width}x{height}, {figures['ingest']['photo_bytes'] / 1e6:.2f} MB; "
        f"thumbnail {figures['ingest']['thumbnail_bytes']:,} bytes"
    )
    print(f"  {'figure':<54} {'value':>12}   {'target':<10} verdict")
    _print_ingest(figures)
    _print_thumbnails(figures)
    _print_latency(figures)
    _print_mqtt(figures)
    _print_memory(figures)
    _print_startup(figures)
    _print_field(figures)
    _print_transfer(figures)
    _print_offload(figures)
    _print_remote_offload(figures)
    _print_cleanup(figures)
    _print_web(figures)
    print(f"({figures['bench_s']:.0f} s)")


def _print_ingest(figures: dict) -> None:
    ingest = figures["ingest"]
    _line(
        f"ingest: store / bare durable write ({ingest['captures']:,} each)",
        f"{ingest['ratio']:.3f}",
        "ingest_ratio",
        figures,
    )
    print(
        f"    store {ingest['store_per_s']:.1f} captures/s (thumbnail from the frame, photo, thumbnail, row);"
        f" bare {ingest['limit_per_s']:.1f} writes/s"
    )
    part = ingest["per_capture_ms"]
    print(
        f"    ms per capture: thumbnail {part['thumbnail']:.1f} + add() {part['add']:.1f} (SHA-256 of the"
        f" photo {part['sha256']:.1f} of it), against a bare write of {part['bare_write']:.1f}"
    )


def _print_thumbnails(figures: dict) -> None:
    ms = figures["thumbnail_ms"]
    speedup = figures["thumbnail_speedup_vs_naive"]
    _line(
        "thumbnail from the JPEG: naive / store's way",
        f"{speedup['jpeg']:.2f}",
        "thumbnail_speedup_vs_naive_jpeg",
        figures,
    )
    _line(
        "thumbnail from the small frame: naive / store's way",
        f"{speedup['frame']:.2f}",
        "thumbnail_speedup_vs_naive_frame",
        figures,
    )
    _line(
        "thumbnail from the JPEG: store's way / reduced decode",
        f"{figures['thumbnail_vs_decode_floor']:.2f}",
        "thumbnail_vs_decode_floor",
        figures,
    )
    print(
        f"    median ms of {plan.THUMBNAIL_RUNS}: frame {ms['frame']:.1f}, JPEG {ms['jpeg']:.1f}, "
        f"naive {ms['naive']:.1f}, reduced decode alone {ms['decode_floor']:.1f}"
    )


def _print_latency(figures: dict) -> None:
    """Trigger to acknowledgement, idle and while a full check recovers photos."""
    latency = figures["latency_ms"]
    _line(
        f"trigger to ack, p99 / bare write p99 ({figures['latency_triggers']} presses)",
        f"{figures['latency_ratio']['p99']:.2f}",
        "latency_p99_ratio",
        figures,
    )
    print(
        f"    ms p50 / p99: acknowledged minus camera {latency['acknowledged']['p50']:.1f} / "
        f"{latency['acknowledged']['p99']:.1f}, bare write {latency['bare']['p50']:.1f} / "
        f"{latency['bare']['p99']:.1f} (p50 ratio {figures['latency_ratio']['p50']:.2f}); "
        f"camera {latency['camera']['p50']:.1f} / {latency['camera']['p99']:.1f}"
    )
    _line(
        f"recovery of {figures['recovery_photos']:,} photos: trigger to ack p99 / idle",
        f"{figures['recovery_latency_ratio']:.2f}",
        "recovery_latency_ratio",
        figures,
    )
    recovery = figures["recovery_latency_ms"]
    print(
        f"    ms p50 / p99: {recovery['p50']:.1f} / {recovery['p99']:.1f} (idle "
        f"{latency['acknowledged']['p50']:.1f} / {latency['acknowledged']['p99']:.1f}); "
        f"{figures['recovery_progress'] * 100:.0f} % of the check done by the last press, "
        f"{figures['recovery_photos_per_s']:.0f} photos/s"
    )


def _print_mqtt(figures: dict) -> None:
    """Trigger to acknowledgement with the MQTT telemetry, broker up and black-holed, against off."""
    names = {"broker_up": "MQTT broker up", "black_holed": "MQTT black-holed"}
    if figures["mqtt_latency_ms"] is None:
        for way, name in names.items():
            _line(f"{name}: trigger to ack p99 / off", f"n/a ({figures['mqtt_na']})",
                  f"mqtt_latency_ratio_{way}", figures)  # fmt: skip
        return
    for way, name in names.items():
        _line(f"{name}: trigger to ack p99 / off ({figures['mqtt_presses']} each)",
              f"{figures['mqtt_latency_ratio'][way]:.2f}", f"mqtt_latency_ratio_{way}", figures)  # fmt: skip
    ms, holed = figures["mqtt_latency_ms"], figures["mqtt_black_holed"]
    print(
        "    ms p50 / p99: "
        + ", ".join(f"{way.replace('_', ' ')} {ms[way]['p50']:.1f} / {ms[way]['p99']:.1f}" for way in ms)
    )
    why = f" ({holed['reason']})" if holed["reason"] else ""
    print(
        f"    {figures['mqtt_delivered']} of {figures['mqtt_presses']} capture events delivered by the "
        f"broker; black-holed: {holed['state']}{why}"
    )


def _print_memory(figures: dict) -> None:
    memory = figures["memory"]
    growth = figures["verdicts"]["rss_growth_mib"]["value"]
    _line(
        "memory: peak RSS over the ingest run, MiB",
        f"{memory['peak_rss_bytes'] / 2**20:.1f}",
        "peak_rss_mib",
        figures,
    )
    _line(
        f"memory: RSS growth, capture {memory['growth_from']:,} to {figures['ingest']['captures']:,}, MiB",
        "n/a" if growth is None else f"{growth:.2f}",
        "rss_growth_mib",
        figures,
    )


def _print_startup(figures: dict) -> None:
    startup = figures["startup_s"]
    _line(
        f"start-up to READY=1: {figures['startup_index_size']:,} captures / empty",
        f"{figures['startup_ratio']:.2f}",
        "startup_ratio",
        figures,
    )
    print(
        f"    median s of {plan.STARTUP_RUNS}: empty {startup['empty']:.3f}, "
        f"{figures['startup_index_size']:,} captures {startup['full']:.3f}"
    )


def _print_field(figures: dict) -> None:
    field = figures["field"]
    _line(
        "field: captures per minute the storage sustains",
        f"{field['captures_per_minute']:,}",
        "captures_per_minute",
        figures,
    )
    for per_hour, hours in field["hours_to_cleanup"].items():
        _line(
            f"field: hours until cleanup starts, at {per_hour / 60:g} capture(s)/min",
            f"{hours:,.1f}",
            "",
            figures,
        )
    print(
        f"    {field['bytes_per_capture'] / 1e6:.2f} MB per capture; {field['free_bytes'] / 1e9:.1f} GB free,"
        f" cleanup starts below {field['cleanup_start_free_bytes'] / 1e9:.1f} GB (default config)"
    )


def _print_offload(figures: dict) -> None:
    offload = figures["offload"]
    if offload["ratio"] is None:
        _line("offload: verified copy / bare copy to a FAT32 stick", f"n/a ({offload['na']})",
              "offload_ratio", figures)  # fmt: skip
        return
    _line(f"offload: verified copy / bare copy ({offload['photos']} photos)", f"{offload['ratio']:.2f}",
          "offload_ratio", figures)  # fmt: skip
    print(
        f"    {offload['stick']}: offload {offload['offload_mb_per_s']:,.1f} MB/s, "
        f"bare copy (write, fsync) {offload['bare_mb_per_s']:,.1f} MB/s"
    )


def _print_remote_offload(figures: dict) -> None:
    remote = figures["remote_offload"]
    if remote["ratio"] is None:
        _line("remote offload: upload / bare rclone copy", f"n/a ({remote['na']})",
              "remote_offload_ratio", figures)  # fmt: skip
        return
    _line(f"remote offload: upload / bare rclone copy ({remote['photos']} photos)",
          f"{remote['ratio']:.2f}", "remote_offload_ratio", figures)  # fmt: skip
    print(
        f"    {remote['server']}: upload, verified and listed {remote['offload_mb_per_s']:,.1f} MB/s, "
        f"bare rclone copy {remote['bare_mb_per_s']:,.1f} MB/s"
    )


def _print_transfer(figures: dict) -> None:
    transfer = figures["transfer"]
    _line(f"import: appliance import / bare store ({transfer['photos']} photos)",
          f"{transfer['import_ratio']:.2f}", "import_ratio", figures)  # fmt: skip
    print(f"    {transfer['import_per_s']:.1f} photos/s imported, {transfer['bare_per_s']:.1f} stored bare")
    _line("export: streamed ZIP / read and CRC-32 of the photos", f"{transfer['zip_ratio']:.2f}",
          "zip_ratio", figures)  # fmt: skip
    _line(f"export: peak allocations streaming {transfer['zip_bytes'] / 1e6:.0f} MB of ZIP, MiB",
          f"{transfer['zip_peak_bytes'] / 2**20:.2f}", "zip_peak_mib", figures)  # fmt: skip
    print(
        f"    ZIP {transfer['zip_mb_per_s']:,.0f} MB/s; "
        f"read and CRC-32 {transfer['read_crc_mb_per_s']:,.0f} MB/s"
    )


def _print_cleanup(figures: dict) -> None:
    """Cleanup's own table: the batch choice by index size, then the two deletions."""
    print(
        "cleanup: choosing a batch of the oldest unprotected captures "
        f"(least of {plan.SELECT_RUNS}, sizes interleaved)"
    )
    for size, ms in figures["select_batch_ms"].items():
        print(f"  {size:>9,} captures   {ms:8.3f} ms")
    check = figures["verdicts"]["select_ratio_1m_vs_1k"]
    print(
        f"  plan: {figures['select_plan']}\n  ratio {plan.INDEX_SIZES[-1]:,} / {plan.INDEX_SIZES[0]:,}: "
        f"{figures['select_ratio_1m_vs_1k']}   target <= {check['target']:g}  {check['verdict']}"
    )
    for name, what in OFFLOAD_CHOICES:
        print(f"offload: choosing a batch of {what} (least of {plan.SELECT_RUNS}, sizes interleaved)")
        for size, ms in figures[f"{name}_batch_ms"].items():
            print(f"  {size:>9,} captures   {ms:8.3f} ms")
        check = figures["verdicts"][f"{name}_ratio_1m_vs_1k"]
        print(
            f"  plan: {figures[f'{name}_plan']}\n  ratio {plan.INDEX_SIZES[-1]:,} / {plan.INDEX_SIZES[0]:,}: "
            f"{figures[f'{name}_ratio_1m_vs_1k']}   target <= {check['target']:g}  {check['verdict']}"
        )
    print(f"cleanup: deleting {plan.DELETED:,} captures (photo + thumbnail each)")
    print(f"  through the store  {figures['delete_s']:8.3f} s   (rows, files, folder fsyncs, in batches)")
    print(f"  bare os.unlink     {figures['unlink_s']:8.3f} s   (the same number of files, no fsync)")
    print(f"  ratio              {figures['delete_vs_unlink']:8.2f}   (no target: the price of the fsyncs)")


def _print_web(figures: dict) -> None:
    """The web's own table: p50 / p99 of each route at both index sizes, and their ratio."""
    small, large = figures["web_captures"]
    print(
        f"web: latency over HTTP keep-alive, p50 / p99 in ms of {plan.WEB_REQUESTS} requests each "
        f"(after {plan.WEB_WARMUP} to warm up)"
    )
    recent = ", ".join(
        f"{c['last_hour']} / {c['last_24h']} of {size:,}" for size, c in figures["web_captures"].items()
    )
    print(f"  captures in the last hour / 24 h: {recent}")
    plotted = ", ".join(
        f"{a['last_24h']} / {a['week']} / {a['disk_hours']} of {size:,}"
        for size, a in figures.get("web_activity", {}).items()
    )
    print(f"  status page plots: captures in the hourly bars / in the week's, hours of disk: {plotted}")
    header = f"{small:,} captures", f"{large:,} captures", f"ratio p50 (target <= {plan.WEB_RATIO_TARGET})"
    print(f"  {'route':<40} {header[0]:>19} {header[1]:>19}   {header[2]}")
    for route, by_size in figures["web_ms"].items():
        cells = [f"{by_size[size]['p50']:8.3f} / {by_size[size]['p99']:8.3f}" for size in (small, large)]
        ratio, verdict_ = figures["web_ratio_1m_vs_1k"][route], figures["web_verdict"][route]
        print(f"  {route:<40} {cells[0]:>19} {cells[1]:>19}   {ratio:9.2f}  {verdict_}")
