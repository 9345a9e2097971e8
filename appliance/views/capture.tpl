% rebase("layout.tpl", title=f"Capture #{c['seq']}", current="captures")
<p><a href="{{c["media_url"]}}"><img class="photo" src="{{c["media_url"]}}" alt="capture {{c["seq"]}}" width="{{c["width"]}}" height="{{c["height"]}}"></a></p>
% if logged_in:
<form method="post" action="/captures/{{c["id"]}}/{{"unprotect" if c["protected"] else "protect"}}">
<button>{{"Let cleanup delete it" if c["protected"] else "Protect from cleanup"}}</button>
</form>
% elif actions_on:
<p><a href="/login">Log in to protect photos from cleanup</a></p>
% elif not token_set:
<p class="hint">To protect photos from cleanup here, set <code>web_token</code> in the config (see “Keep captures” in docs/operating.md).</p>
% end
<dl>
<dt>Taken</dt><dd>{{!when(c["captured_at"], seconds=True)}}
% if not c["clock_synced"]:
<br><span class="mark">⚠</span> the clock had not been set: this time may be wrong
% end
</dd>
<dt>Trigger</dt><dd>{{c["trigger"]}} ({{c["capture_method"] or "unknown"}})</dd>
<dt>Protected from cleanup</dt><dd>{{"Yes" if c["protected"] else "No"}}</dd>
<dt>Size</dt><dd>{{c["width"]}} × {{c["height"]}} px, {{"%.0f" % (c["bytes"] / 1e3)}} kB</dd>
<dt>Event</dt><dd>{{c["event_id"]}}</dd>
<dt>Id</dt><dd>{{c["id"]}}</dd>
<dt>SHA-256</dt><dd>{{c["sha256"]}}</dd>
</dl>
% for heading, rows in metadata:
<h2>{{heading}}</h2>
<dl>
% for label, text in rows:
<dt>{{label}}</dt><dd>{{text}}</dd>
% end
</dl>
% end
<p><a href="/api/captures/{{c["id"]}}">JSON</a></p>
