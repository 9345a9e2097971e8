<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
% if defined("refresh_s"):
<meta http-equiv="refresh" content="{{refresh_s}}">
% end
<title>{{title}} · {{trap}}</title>
<link rel="stylesheet" href="/style.css">
</head>
<body>
<header>
<span class="trap">{{trap}}</span>
<nav>
% for path, label, name in (("/", "Status", "status"), ("/captures", "Captures", "captures")):
<a href="{{path}}"{{!' aria-current="page"' if current == name else ""}}>{{label}}</a>
% end
% if actions_on and not logged_in:
<a href="/login"{{!' aria-current="page"' if current == "login" else ""}}>Log in</a>
% end
</nav>
% if actions_on and logged_in:
<form method="post" action="/logout"><button>Log out</button></form>
% end
</header>
<h1>{{title}}</h1>
{{!base}}
</body>
</html>
