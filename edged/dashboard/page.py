"""The dashboard's HTML: the page's frame, rendered here with what is known when it is
asked for (the device, its pipelines and models, the turbines in each state), and the
login form. ``static/dashboard.js`` fills the frame from ``board`` events and keeps it
live; ``static/dashboard.css`` lays it out from a phone's width up. No build step, no
framework, nothing fetched from elsewhere.
"""

from __future__ import annotations

from html import escape
from typing import Any

from edged.dashboard.board import STATES

_LABELS = {"ok": "ok", "anomaly": "anomaly", "stale": "stale", "no_model": "no model"}

_HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/static/dashboard.css">
</head>
"""


def dashboard_page(state: dict[str, Any]) -> str:
    """The page, from a :meth:`TurbineBoard.state` (its turbines are not needed)."""
    device = escape(state["device"])
    summary = state["summary"]
    chips = [f'<button class="chip" data-filter="" aria-pressed="true">all '
             f'<b data-count="turbines">{summary["turbines"]}</b></button>']
    chips += [f'<button class="chip" data-filter="{s}" data-state="{s}" aria-pressed="false">'
              f'{_LABELS[s]} <b data-count="{s}">{summary[s]}</b></button>' for s in STATES]
    models = "".join(
        f'<li data-pipeline="{escape(name)}"><b>{escape(name)}</b> '
        f'<span class="model">{escape(p["model"]["name"])} v{p["model"]["version"]}</span> '
        f'<span class="extra"></span></li>' for name, p in state["pipelines"].items())
    return _HEAD.format(title=f"edged · {device}") + f"""<body>
<header>
  <h1>edged <span class="device" id="device">{device}</span></h1>
  <span id="conn" class="conn" data-conn="connecting">connecting</span>
</header>
<section id="health" class="health" aria-label="health"></section>
<ul id="models" class="models">{models}</ul>
<nav id="summary" class="summary" aria-label="turbines by state">{"".join(chips)}</nav>
<main id="grid" class="grid" aria-live="polite"></main>
<nav id="pager" class="pager">
  <button id="prev" aria-label="previous page">&lsaquo;</button>
  <span id="page-info"></span>
  <button id="next" aria-label="next page">&rsaquo;</button>
</nav>
<section id="focus" class="focus" hidden></section>
<section class="alarms"><h2>Recent alarms</h2><ol id="alarm-list"></ol></section>
<noscript><p>The live view needs JavaScript; the same data is at
<a href="/api/state">/api/state</a>.</p></noscript>
<script src="/static/dashboard.js"></script>
</body>
</html>
"""


def login_page(device: str, message: str = "") -> str:
    note = f'<p class="error" id="login-error">{escape(message)}</p>' if message else ""
    return _HEAD.format(title=f"edged · {escape(device)} · log in") + f"""<body>
<form id="login" class="login" method="post" action="/login">
  <h1>edged <span class="device">{escape(device)}</span></h1>
  <label>Dashboard token
    <input name="token" type="password" autocomplete="current-password" required autofocus>
  </label>
  {note}
  <button type="submit">Log in</button>
</form>
</body>
</html>
"""
