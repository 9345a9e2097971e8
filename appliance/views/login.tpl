% rebase("layout.tpl", title="Log in", current="login")
% if failed:
<p class="banner error">Wrong token.</p>
% end
<form method="post" action="/login">
<label>Web token (<code>web_token</code> in the config)<br><input type="password" name="token" autocomplete="current-password" required></label>
<button>Log in</button>
</form>
