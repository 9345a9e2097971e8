% # The status page's plots (appliance.activity): SVG drawn on the server, no script, no style
% # attribute (the Content-Security-Policy refuses inline styles): presentation attributes only.
% from appliance.activity import COUNTED
<h2>Activity</h2>
<p class="note">{{COUNTED[0].upper() + COUNTED[1:]}}.</p>
<div class="plots">
% for plot in plots:
<figure id="{{plot.name}}">
<figcaption>{{plot.heading}}</figcaption>
<svg class="plot" viewBox="0 0 {{plot.width}} {{plot.height}}" width="100%" role="img" aria-labelledby="{{plot.name}}-title" font-family="sans-serif" font-size="{{plot.font_size}}" fill="#222">
<title id="{{plot.name}}-title">{{plot.summary}}</title>
% for y, label in plot.y_ticks:
<line x1="{{plot.left}}" x2="{{plot.right}}" y1="{{y}}" y2="{{y}}" stroke="#ccc" stroke-width="0.5"/>
<text x="{{plot.left - 4}}" y="{{y + 4}}" text-anchor="end">{{label}}</text>
% end
% for area in plot.areas:
<polygon points="{{area}}" fill="#0072b2" fill-opacity="0.2"/>
% end
% for line in plot.lines:
<polyline points="{{line}}" fill="none" stroke="#0072b2" stroke-width="1.5"/>
% end
% for bar in plot.bars:
<g><title>{{bar.title}}</title><rect x="{{bar.x}}" y="{{plot.top}}" width="{{bar.width}}" height="{{plot.bottom - plot.top}}" fill="none" pointer-events="all"/>
% for r in bar.rects:
<rect x="{{r.x}}" y="{{r.y}}" width="{{r.width}}" height="{{r.height}}" fill="{{r.fill}}"/>
% end
</g>
% end
<line x1="{{plot.left}}" x2="{{plot.right}}" y1="{{plot.bottom}}" y2="{{plot.bottom}}" stroke="#555"/>
% for x, label in plot.x_ticks:
<text x="{{x}}" y="{{plot.height - 8}}" text-anchor="middle">{{label}}</text>
% end
% if plot.empty:
<text x="{{(plot.left + plot.right) / 2}}" y="{{(plot.top + plot.bottom) / 2}}" text-anchor="middle" fill="#555">{{plot.empty}}</text>
% end
</svg>
% if plot.legend:
<p class="legend">
% for label, colour in plot.legend:
<span><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill="{{colour}}"/></svg> {{label}}</span>
% end
</p>
% end
% if plot.note:
<p class="note">{{plot.note}}</p>
% end
</figure>
% end
</div>
