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
<figcaption>#{{c["seq"]}} {{c["trigger"]}}{{" ★" if c["protected"] else ""}}<br><time datetime="{{c["captured_at"]}}">{{c["captured_at"][:10]}} {{c["captured_at"][11:19]}} UTC</time>{{"" if c["clock_synced"] else " (clock not set)"}}</figcaption>
</figure>
% end
</div>
