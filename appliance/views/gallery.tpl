% rebase("layout.tpl", title="Captures", current="captures")
<form class="filters" method="get" action="/captures">
<label>Day ({{when.label}})<br><input type="date" name="day" value="{{query["day"] or ""}}"></label>
<label>Trigger<br><select name="trigger">
<option value="">any</option>
% for t in triggers:
<option{{!" selected" if query["trigger"] == t else ""}}>{{t}}</option>
% end
</select></label>
<button>Show</button>
</form>
% include("grid.tpl", captures=captures)
% if next_url:
<p><a href="{{next_url}}">Older →</a></p>
% end
