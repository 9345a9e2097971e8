% if not captures:
<p>No captures yet.</p>
% end
<div class="grid">
% for c in captures:
<figure>
<a href="{{c["page_url"]}}">
% if c["thumbnail_url"]:
<img src="{{c["thumbnail_url"]}}" alt="capture {{c["seq"]}}" width="160" height="120" loading="lazy">
% else:
<span>no thumbnail</span>
% end
</a>
<figcaption>#{{c["seq"]}} {{c["trigger"]}}{{!' <span class="mark" title="protected from cleanup">★</span>' if c["protected"] else ""}}{{!"" if c["clock_synced"] else ' <span class="mark" title="the clock was not set: the time may be wrong">⚠</span>'}}<br>{{!when(c["captured_at"])}}</figcaption>
</figure>
% end
</div>
% protected, unsure = any(c["protected"] for c in captures), any(not c["clock_synced"] for c in captures)
% if protected or unsure:
<p class="legend">
% if protected:
<span class="mark">★</span> protected from cleanup.
% end
% if unsure:
<span class="mark">⚠</span> taken before the clock was set: the time may be wrong.
% end
</p>
% end
