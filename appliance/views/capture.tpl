% rebase("layout.tpl", title=f"Capture #{c['seq']}")
<p><a href="{{c["media_url"]}}"><img class="photo" src="{{c["media_url"]}}" alt="capture {{c["seq"]}}" width="{{c["width"]}}" height="{{c["height"]}}"></a></p>
% if logged_in:
<form method="post" action="/captures/{{c["id"]}}/{{"unprotect" if c["protected"] else "protect"}}">
<button>{{"Let cleanup delete it" if c["protected"] else "Protect from cleanup"}}</button>
</form>
% end
<dl>
<dt>Taken</dt><dd>{{c["captured_at"]}}{{"" if c["clock_synced"] else " (clock not synchronised)"}}</dd>
<dt>Trigger</dt><dd>{{c["trigger"]}} ({{c["capture_method"] or "unknown"}})</dd>
<dt>Protected</dt><dd>{{"yes" if c["protected"] else "no"}}</dd>
<dt>Size</dt><dd>{{c["width"]}} × {{c["height"]}} px, {{"%.0f" % (c["bytes"] / 1e3)}} kB</dd>
<dt>Event</dt><dd>{{c["event_id"]}}</dd>
<dt>Id</dt><dd>{{c["id"]}}</dd>
<dt>SHA-256</dt><dd>{{c["sha256"]}}</dd>
% for key, value in c["metadata"].items():
<dt>{{key}}</dt><dd>{{value}}</dd>
% end
</dl>
<p><a href="/api/captures/{{c["id"]}}">JSON</a></p>
