"""Small HTML building blocks for the Dashboard pages. Every value goes through ``h`` (escaping) on its way in."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from html import escape

NAV = (("overview", "Overview", "/dashboard/"), ("listeners", "Listeners", "/dashboard/listeners"),
       ("certificates", "Certificates", "/dashboard/certificates"), ("clients", "Clients", "/dashboard/clients"))


def h(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def badge(text: str, tone: str = "neutral") -> str:
    return f'<span class="badge badge-{h(tone)}">{h(text)}</span>'


def parse_time(value: object) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if isinstance(value, str) and value:
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    return None


def when(value: object) -> str:
    moment = parse_time(value)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "—"


def duration_text(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def expiry(not_after: object, now: dt.datetime | None = None) -> str:
    """The expiry date with a badge: red when expired or within 7 days, amber within 30."""
    moment = parse_time(not_after)
    if moment is None:
        return "—"
    now = now or dt.datetime.now(dt.timezone.utc)
    left = moment - now
    if left.total_seconds() <= 0:
        note = badge("expired", "bad")
    elif left <= dt.timedelta(days=7):
        note = badge(f"expires in {duration_text(left.total_seconds())}", "bad")
    elif left <= dt.timedelta(days=30):
        note = badge(f"expires in {left.days} days", "warn")
    else:
        note = badge(f"{left.days} days left", "good")
    return f'<span class="nowrap">{h(moment.strftime("%Y-%m-%d %H:%M UTC"))}</span> {note}'


def fingerprint(value: object) -> str:
    if not value:
        return "—"
    text = str(value)
    pairs = ":<wbr>".join(h(text[i:i + 2].upper()) for i in range(0, len(text), 2))  # breaks only between pairs
    return f'<code class="fingerprint" title="SHA-256 of the certificate (DER)">{pairs}</code>'


def subject(value: object) -> str:
    """An RFC 4514 subject with its common name first and bold, the rest quieter."""
    if not value:
        return "—"
    parts = str(value).split(",")
    common = [p for p in parts if p.startswith("CN=")]
    rest = [p for p in parts if not p.startswith("CN=")]
    if not common:
        return h(value)
    return (f'<span class="subject" title="{h(value)}"><strong>{h(common[0][3:])}</strong>'
            f'<span class="muted small">{h(", ".join(rest))}</span></span>')


def table(headers: Iterable[str], rows: Iterable[Iterable[str]], empty: str, table_id: str = "") -> str:
    """``rows`` hold ready HTML cells (already escaped)."""
    head = "".join(f"<th>{h(title)}</th>" for title in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td class="empty" colspan="99">{h(empty)}</td></tr>'
    ident = f' id="{h(table_id)}"' if table_id else ""
    return f'<div class="table-wrap"><table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def definition_list(items: Iterable[tuple[str, str]]) -> str:
    """``items``: (label, ready HTML value)."""
    return '<dl class="facts">' + "".join(f"<dt>{h(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def page(title: str, active: str, body: str, *, node: str, user: str, csrf: str, flash: str = "",
         managed_by: str = "") -> str:
    nav = "".join(f'<a href="{href}" class="{"active" if key == active else ""}">{h(label)}</a>'
                  for key, label, href in NAV)
    managed = (f'<div class="managed-banner">Managed by the MQTTBroker resource <strong>{h(managed_by)}</strong>: '
               "its settings are the source of truth and are shown read-only.</div>") if managed_by else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{h(title)} · Wharf Dashboard</title>
<link rel="icon" href="/dashboard/static/logo.svg" type="image/svg+xml">
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
<script src="/dashboard/static/dashboard.js" defer></script></head>
<body><div class="shell">
<aside class="sidebar"><div class="brand"><img src="/dashboard/static/logo.svg" alt="" width="28" height="28">
<span>Wharf</span></div><nav>{nav}</nav>
<div class="sidebar-foot"><div class="node" title="node name">{h(node)}</div>
<form method="post" action="/dashboard/logout"><input type="hidden" name="csrf" value="{h(csrf)}">
<button class="link" type="submit">Log out {h(user)}</button></form></div></aside>
<main><header class="page-head"><h1>{h(title)}</h1></header>{managed}{flash}{body}</main>
</div></body></html>"""


def flash(message: str, tone: str = "good") -> str:
    return f'<div class="flash flash-{h(tone)}" role="status">{h(message)}</div>' if message else ""


def login_page(token: str, error: str, methods: str) -> str:
    notice = f'<div class="flash flash-bad" role="alert">{h(error)}</div>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · Wharf Dashboard</title>
<link rel="icon" href="/dashboard/static/logo.svg" type="image/svg+xml">
<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head>
<body class="login-body"><form class="login card" method="post" action="/dashboard/login" autocomplete="off">
<div class="brand brand-large"><img src="/dashboard/static/logo.svg" alt="" width="36" height="36"><span>Wharf</span></div>
<p class="muted">{h(methods)}</p>{notice}
<input type="hidden" name="csrf" value="{h(token)}">
<label>Username<input name="username" id="username" autocomplete="username"></label>
<label>Password or admin token<input name="password" id="password" type="password"
 autocomplete="current-password" required></label>
<button class="primary" type="submit" id="login">Log in</button></form></body></html>"""
