<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
% if defined("refresh_s"):
<meta http-equiv="refresh" content="{{refresh_s}}">
% end
<title>{{title}} · Camera trap</title>
<link rel="stylesheet" href="/style.css">
</head>
<body>
<header>
<h1>{{title}}</h1>
<nav><a href="/">Status</a> <a href="/captures">Captures</a>
% if actions_on and logged_in:
</nav><form method="post" action="/logout"><button>Log out</button></form>
% elif actions_on:
<a href="/login">Log in</a></nav>
% else:
</nav>
% end
</header>
{{!base}}
</body>
</html>
