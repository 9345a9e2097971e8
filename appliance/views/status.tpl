% rebase("layout.tpl", title=f"Camera trap ({mode})")
% if problems:
% for area, reason in problems.items():
<p class="banner {{"error" if area in ("camera", "storage", "space") else "warning"}}"><strong>{{area}}:</strong> {{reason}}</p>
% end
% else:
<p class="banner ok">All is well: capturing.</p>
% end
<dl>
<dt>Captures</dt><dd>{{captures["total"]}} in all, {{captures["last_hour"]}} in the last hour, {{captures["last_24h"]}} in the last 24 h</dd>
% if get("triggers"):
<dt>Suppressed triggers</dt><dd>{{triggers["suppressed_total"]}} (cooldown and rate limit)</dd>
% end
% if disk:
<dt>Disk</dt><dd>{{"%.1f" % ((disk["total_bytes"] - disk["free_bytes"]) / 1e9)}} GB used, {{"%.1f" % (disk["free_bytes"] / 1e9)}} GB free of {{"%.1f" % (disk["total_bytes"] / 1e9)}} GB<br>
<meter min="0" max="100" high="90" value="{{100 - disk["free_percent"]}}">{{100 - disk["free_percent"]}} % used</meter>
% if disk["hours_left"] is not None:
<br>about {{"%.0f h" % disk["hours_left"] if disk["hours_left"] < 48 else "%.0f days" % (disk["hours_left"] / 24)}} of capturing left at the last hour's rate
% end
</dd>
% end
<dt>Cleanup</dt><dd>{{cleanup.get("state", "ok")}}{{(": " + cleanup["reason"]) if cleanup.get("reason") else ""}}
% run = cleanup.get("last_run")
% if run:
<br>last run {{run["started_at"]}} ({{run["reason"]}}): {{run["deleted"]}} deleted, {{"%.1f" % (run["bytes_freed"] / 1e6)}} MB freed{{"" if run["finished_at"] else ", under way"}}
% end
</dd>
% if get("camera"):
<dt>Camera</dt><dd>{{camera["state"]}}</dd>
% end
% if get("system") and system["cpu_temperature_c"] is not None:
<dt>CPU temperature</dt><dd>{{"%.0f" % system["cpu_temperature_c"]}} °C</dd>
% end
<dt>Uptime</dt><dd>{{"%d h %02d min" % (uptime_s // 3600, uptime_s % 3600 // 60)}}</dd>
<dt>Version</dt><dd>{{version}} ({{mode}})</dd>
% if startup_check and startup_check["full_check_progress"] is not None and startup_check["full_check_progress"] < 1:
<dt>Checking photos</dt><dd>{{"%d" % (startup_check["full_check_progress"] * 100)}} % (after an unclean shutdown; capturing goes on)</dd>
% end
% if startup_check and startup_check["repairs"]:
<dt>Start-up check</dt><dd>{{startup_check["repairs"]}} repairs to the capture store (see the log)</dd>
% end
</dl>
<h2>Latest captures</h2>
% include("grid.tpl", captures=latest)
<p><a href="/captures">All captures</a> · <a href="/api/status">JSON</a>
% if export_on:
 · <a href="/export/camtrap-dp.zip" download>Download all as Camtrap DP (ZIP)</a>
% end
</p>
