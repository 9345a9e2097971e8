% rebase("layout.tpl", title="Status", current="status")
% if status.problems:
% for problem in status.problems:
<p class="banner {{"error" if problem.stops_capturing else "warning"}}"><strong>{{problem.area}}:</strong> {{problem.reason}}</p>
% end
% else:
<p class="banner ok">All is well: capturing.</p>
% end
<dl>
% captures = status.captures
<dt>Captures</dt><dd>{{captures.total}} in all, {{captures.last_hour}} in the last hour, {{captures.last_24h}} in the last 24 h</dd>
% if status.triggers:
<dt>Suppressed triggers</dt><dd>{{status.triggers.suppressed_total}} (cooldown and rate limit)</dd>
% end
% disk = status.disk
% if disk:
<dt>Disk</dt><dd>{{"%.1f" % ((disk.total_bytes - disk.free_bytes) / 1e9)}} GB used, {{"%.1f" % (disk.free_bytes / 1e9)}} GB free of {{"%.1f" % (disk.total_bytes / 1e9)}} GB<br>
<meter min="0" max="100" high="90" value="{{100 - disk.free_percent}}">{{100 - disk.free_percent}} % used</meter>
% if disk.hours_left is not None:
<br>about {{"%.0f h" % disk.hours_left if disk.hours_left < 48 else "%.0f days" % (disk.hours_left / 24)}} of capturing left at the last hour's rate
% end
</dd>
% end
% for target in status.offload:
% if target.state != "off" and target.target == "remote":
<dt>Upload to {{target.remote}}</dt><dd>{{target.state}}{{(": " + target.reason) if target.reason else ""}}; {{target.pending_captures}} photos ({{"%.1f" % (target.pending_bytes / 1e6)}} MB) not uploaded yet
% if target.rate_bytes_per_s:
<br>{{"%.2f" % (target.rate_bytes_per_s / 1e6)}} MB/s{{!"" if target.seconds_left is None else ", about %d min left" % (target.seconds_left // 60 + 1)}}
% end
% run = target.last_run
% if run and run.finished_at:
<br>last upload {{!when(run.started_at)}}: {{run.copied}} sent and verified, {{run.skipped}} already there{{", %d errors" % len(run.errors) if run.errors else ""}}
% end
% if target.next_try_at and target.state != "waiting":
<br>next {{"try" if target.state not in ("done", "ready") else "look"}} {{!when(target.next_try_at)}}
% end
</dd>
% elif target.state != "off":
% name = target.target.upper() + " stick"
% if target.safe_to_remove:
<p class="banner ok"><strong>{{name}}:</strong> copy done and checked: safe to remove.</p>
% elif target.state == "copying":
<p class="banner warning"><strong>{{name}}:</strong> copying, do not remove it{{!"" if target.seconds_left is None else " (about %d min left)" % (target.seconds_left // 60 + 1)}}.</p>
% end
<dt>{{name}}</dt><dd>{{target.state}}{{(": " + target.reason) if target.reason else ""}}; {{target.pending_captures}} photos ({{"%.1f" % (target.pending_bytes / 1e6)}} MB) not on it yet
% if target.rate_bytes_per_s:
<br>{{"%.1f" % (target.rate_bytes_per_s / 1e6)}} MB/s
% end
% run = target.last_run
% if run and run.finished_at:
<br>last copy {{!when(run.started_at)}}: {{run.copied}} copied, {{run.skipped}} already there{{", %d errors" % len(run.errors) if run.errors else ""}}{{(", ended: " + run.reason) if run.reason else ""}}
% end
% if logged_in and target.state != "copying":
<form method="post" action="/offload"><button>Copy to USB now</button></form>
% elif actions_on and target.state != "copying":
<br><a href="/login">Log in to copy to the stick now</a>
% end
</dd>
% end
% end
% mqtt = status.mqtt
% if mqtt:
<dt>MQTT</dt><dd>{{mqtt.state}} {{"to" if mqtt.state == "connected" else "from"}} {{mqtt.broker}} since {{!when(mqtt.since)}}{{(": " + mqtt.reason) if mqtt.reason else ""}}; {{mqtt.published}} capture events delivered{{", %d waiting" % mqtt.queued if mqtt.queued else ""}}{{", %d dropped while the broker was away" % mqtt.dropped if mqtt.dropped else ""}}{{", %d commands ignored" % mqtt.commands_ignored if mqtt.commands_ignored else ""}}</dd>
% end
% cleanup = status.cleanup
<dt>Cleanup</dt><dd>{{cleanup.state if cleanup else "ok"}}{{(": " + cleanup.reason) if cleanup and cleanup.reason else ""}}
% run = status.last_cleanup_run
% if run:
<br>last run {{!when(run["started_at"])}} ({{run["reason"]}}): {{run["deleted"]}} deleted, {{"%.1f" % (run["bytes_freed"] / 1e6)}} MB freed{{"" if run["finished_at"] else ", under way"}}
% end
</dd>
% if status.camera:
<dt>Camera</dt><dd>{{status.camera.state}}</dd>
% end
% if status.system and status.system.cpu_temperature_c is not None:
<dt>CPU temperature</dt><dd>{{"%.0f" % status.system.cpu_temperature_c}} °C</dd>
% end
<dt>Uptime</dt><dd>{{"%d h %02d min" % (status.uptime_s // 3600, status.uptime_s % 3600 // 60)}}</dd>
<dt>Version</dt><dd>{{status.version}} ({{status.mode}})</dd>
% check = status.startup_check
% if check and check.full_check_progress is not None and check.full_check_progress < 1:
<dt>Checking photos</dt><dd>{{"%d" % (check.full_check_progress * 100)}} % (after an unclean shutdown; capturing goes on)</dd>
% end
% if check and check.repairs:
<dt>Start-up check</dt><dd>{{check.repairs}} repairs to the capture store (see the log)</dd>
% end
</dl>
% include("activity.tpl", plots=activity)
<h2>Latest captures</h2>
% include("grid.tpl", captures=status.latest)
<p><a href="/captures">All captures</a> · <a href="/api/status">JSON</a>
% if export and not export["missing"] and export["allowed"]:
 · <a href="/export/camtrap-dp.zip" download>Download all as Camtrap DP (ZIP)</a>
% end
</p>
% if export and export["missing"]:
<p class="hint">To download the photos as a Camtrap DP package, set {{" and ".join(export["missing"])}} (decimal degrees) in the config.</p>
% elif export and not export["allowed"] and actions_on:
<p class="hint"><a href="/login">Log in</a> to download the photos as a Camtrap DP package.</p>
% end
