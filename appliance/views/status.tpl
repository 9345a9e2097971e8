<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{{refresh_s}}">
<title>Camera trap</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0.5rem; max-width: 60rem; }
h1 { font-size: 1.3rem; margin: 0.2rem 0; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; margin: 0.5rem 0; }
dt { font-weight: bold; }
dd { margin: 0; }
.bar { background: #ddd; height: 0.6rem; width: 100%; max-width: 16rem; }
.bar span { display: block; height: 100%; background: #2a7; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 0.4rem; }
figure { margin: 0; font-size: 0.8rem; }
figure img { width: 100%; height: auto; display: block; background: #eee; }
.problem { background: #fdd; border-left: 0.3rem solid #c22; padding: 0.3rem 0.5rem; margin: 0.3rem 0; }
</style>
</head>
<body>
<h1>Camera trap ({{mode}})</h1>
% for area, reason in problems.items():
<p class="problem"><strong>{{area}}:</strong> {{reason}}</p>
% end
<dl>
<dt>Captures</dt><dd>{{captures["total"]}} in all, {{captures["last_24h"]}} in the last 24 h</dd>
<dt>Free disk</dt><dd>{{"%.1f" % (disk["free_bytes"] / 1e9)}} GB of {{"%.1f" % (disk["total_bytes"] / 1e9)}} GB ({{disk["free_percent"]}} %)
<div class="bar"><span style="width: {{100 - disk["free_percent"]}}%"></span></div></dd>
<dt>Cleanup</dt><dd>{{cleanup.get("state", "ok")}}{{(": " + cleanup["reason"]) if cleanup.get("reason") else ""}}
% if cleanup.get("start_free_bytes") is not None:
<br>starts below {{"%.2f" % (cleanup["start_free_bytes"] / 1e9)}} GB free, stops at {{"%.2f" % (cleanup["stop_free_bytes"] / 1e9)}} GB
% end
% run = cleanup.get("last_run")
% if run:
<br>last run {{run["started_at"]}} ({{run["reason"]}}): {{run["deleted"]}} deleted, {{"%.1f" % (run["bytes_freed"] / 1e6)}} MB freed{{"" if run["finished_at"] else ", under way"}}
% end
</dd>
% if get("triggers"):
<dt>Suppressed triggers</dt><dd>{{triggers["suppressed_total"]}} (cooldown and rate limit)</dd>
% end
% if get("camera"):
<dt>Camera</dt><dd>{{camera["state"]}}</dd>
% end
% if get("system") and system["cpu_temperature_c"] is not None:
<dt>CPU temperature</dt><dd>{{"%.0f" % system["cpu_temperature_c"]}} °C</dd>
% end
<dt>Uptime</dt><dd>{{"%d h %02d min" % (uptime_s // 3600, uptime_s % 3600 // 60)}}</dd>
<dt>Version</dt><dd>{{version}}</dd>
% if startup_check and startup_check["full_check_progress"] is not None and startup_check["full_check_progress"] < 1:
<dt>Checking photos</dt><dd>{{"%d" % (startup_check["full_check_progress"] * 100)}} % (after an unclean shutdown; capturing goes on)</dd>
% end
% if startup_check and startup_check["repairs"]:
<dt>Start-up check</dt><dd>{{startup_check["repairs"]}} repairs to the capture store (see the log)</dd>
% end
</dl>
<h2>Latest captures</h2>
% if not latest:
<p>No captures yet.</p>
% end
<div class="grid">
% for c in latest:
<figure>
<a href="{{c["media_url"]}}">
% if c["thumbnail_url"]:
<img src="{{c["thumbnail_url"]}}" alt="capture {{c["seq"]}}" loading="lazy">
% else:
<span>no thumbnail</span>
% end
</a>
<figcaption>#{{c["seq"]}} {{c["trigger"]}}<br>{{c["captured_at"]}}{{"" if c["clock_synced"] else " (clock not synced)"}}</figcaption>
</figure>
% end
</div>
<p><a href="/api/status">JSON</a></p>
</body>
</html>
