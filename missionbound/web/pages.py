"""Server-rendered HTML pages: sign-in, consent and errors (Jinja2, no script at all).

Every page is rendered with autoescaping on and the same hardening headers:

* ``Content-Security-Policy: default-src 'none'; style-src 'self'; img-src 'self';
  frame-ancestors 'none'; base-uri 'none'``. No script may run, nothing loads from elsewhere,
  and no site may frame the page (clickjacking the Approve button).
  ``form-action`` is deliberately left out. Chrome (checked here with Debian's chromium) and
  Safari apply it to every redirect that follows a form submission, not only to the form's
  ``action``
  (https://github.com/w3c/webappsec-csp/issues/8, still open), so ``form-action 'self'`` on
  the consent page blocks the 303 from POST /consent to the client's ``redirect_uri``, and on
  the sign-in page blocks POST /login -> /authorize -> ``redirect_uri?error=...``. Listing the
  redirect origin is not enough either: a client callback that redirects on (an https
  callback handing over to a native app's scheme) is blocked again. What form-action would
  defend against, an injected ``<form>``, needs markup injection, which autoescaping of every
  value prevents.
* ``X-Frame-Options: DENY`` for browsers that predate ``frame-ancestors``; ``Cache-Control:
  no-store`` (the pages carry a CSRF token and the Mission's details); ``Referrer-Policy:
  no-referrer`` (the /authorize URL holds the request_uri); ``X-Content-Type-Options: nosniff``.

The consent page is rendered from the consent disclosure object alone
(:func:`missionbound.mission.consent.build_consent_disclosure`): what
``consent_rendering_hash`` commits to is what the Approver sees, and the page cannot show
anything the disclosure does not hold. Client-supplied text (the goal, stated constraints,
success criteria, the client's name) is shown as inert text, visually set apart from the
authority the server derived (issuance digest section 4.2, rendering hardening).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

_HERE = Path(__file__).parent
TEMPLATES_DIR = _HERE / "templates"
STATIC_DIR = _HERE / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
PAGE_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

# Plain words for the narrowing rules missionbound.mission.derivation records. The rule code is
# always shown as well, so a rule missing here still reads (as its code).
RULE_WORDS: Mapping[str, str] = {
    "split_by_action_group": "split into one entry per group of actions that take the "
                             "same limits",
    "scope": "not selected by the requested scope",
    "client_registration": "not registered for this client",
    "purpose": "not allowed for the stated purpose",
    "catalog_ceiling": "the most this server allows for these actions",
    "mission_context": "the Mission-wide limit the agent asked for",
    "delegation_policy": "this server's delegation policy for the resource",
    "subsumed": "already covered by another entry",
    "resource_indicator": "not among the requested resource indicators",
    "not_requested": "no requested entry names this resource",
    "max_mission_lifetime": "the longest Mission this server allows",
}

# Characters that change how text is displayed without being visible themselves. Decision:
# they are never removed silently (the page must show what the disclosure holds, and the
# approver should learn that the agent's text carries them) and never passed through (an
# unbalanced U+202E RIGHT-TO-LEFT OVERRIDE can make "pay 5 USD" display as something else).
# Each one is replaced by a visible [U+XXXX] marker and the page warns when any occur.
# Flagged: every format character (Unicode category Cf: the bidi embeddings, overrides and
# isolates U+202A-U+202E and U+2066-U+2069, the marks U+200E, U+200F, U+061C, zero-width
# space, BOM, the invisible tag characters U+E0000-U+E007F that can smuggle text to a model)
# and the C1 controls (C0 controls are refused at intake). Exempt: ZERO WIDTH NON-JOINER and
# ZERO WIDTH JOINER, which several scripts and emoji need and which cannot reorder text; and
# tab, newline and carriage return. Hangul fillers are flagged too: they are letters that
# render as blank space, a known spoofing trick.
# Confusable letters (Cyrillic "а" for Latin "a") are not rewritten: the goal carries no
# authority, the granted authority is rendered from the server's catalog in its own section,
# and the client is identified by its registered client_id beside its self-chosen name.
_ALLOWED_INVISIBLE = frozenset("\t\n\r\u200c\u200d")
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def _is_hidden(char: str) -> bool:
    if char in _ALLOWED_INVISIBLE:
        return False
    return char in _BLANK_LETTERS or unicodedata.category(char) in ("Cf", "Cc")


def hidden_characters(texts: Iterable[str]) -> list[str]:
    """The distinct hidden characters in ``texts``, as ``U+XXXX NAME``, in first-seen order."""
    found: dict[str, None] = {}
    for text in texts:
        for char in text:
            if _is_hidden(char):
                found.setdefault(_describe(char))
    return list(found)


def _describe(char: str) -> str:
    code = f"U+{ord(char):04X}"
    name = unicodedata.name(char, "")
    return f"{code} {name}" if name else code


def reveal(value: Any) -> Markup:
    """``value`` as escaped text with every hidden character replaced by a visible marker."""
    text = value if isinstance(value, str) else str(value)
    out: list[str] = []
    run: list[str] = []
    for char in text:
        if _is_hidden(char):
            out.append(str(escape("".join(run))))
            run = []
            out.append(f'<span class="mb-hidden-char" title="{escape(_describe(char))}">'
                       f"[U+{ord(char):04X}]</span>")
        else:
            run.append(char)
    out.append(str(escape("".join(run))))
    return Markup("".join(out))


def as_json(value: Any) -> Markup:
    """A JSON value (a narrowing decision's requested or granted member), readable and inert."""
    text = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    return reveal(text)


def instant_words(value: Any) -> str:
    """``2026-11-27T17:00:00Z`` as ``Friday 27 November 2026, 17:00:00 UTC``. Shown in UTC
    whatever offset the client wrote, so requested and granted expiry compare at a glance; a
    value that is not an RFC 3339 instant is returned as it is (and escaped by the template)."""
    if not isinstance(value, str):
        return str(value)
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        return value
    if moment.tzinfo is None:
        return value
    moment = moment.astimezone(UTC)
    return f"{moment:%A} {moment.day} {moment:%B %Y, %H:%M:%S} UTC"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        # On for every template, whatever its name: no value reaches a page unescaped.
        autoescape=True,
        # A disclosure member the template expects but does not find is an error (a 500),
        # never a consent page silently missing a line.
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters["reveal"] = reveal
    env.filters["as_json"] = as_json
    env.filters["instant_words"] = instant_words
    env.globals["rule_words"] = RULE_WORDS
    return env


_ENV = _environment()


def _page(template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = _ENV.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status_code, headers=dict(PAGE_HEADERS))


def render_page(template: str, *, status_code: int = 200,
                headers: Mapping[str, str] | None = None, **context: Any) -> HTMLResponse:
    """Any template of this folder (the console's, under ``console/``) with the pages'
    environment and hardening headers; ``headers`` add to or replace those."""
    response = _page(template, status_code=status_code, **context)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def render_login(*, hidden: dict[str, str], error: str | None = None, demo: bool = False,
                 status_code: int = 200) -> HTMLResponse:
    """The sign-in form: POST /login with ``username``, ``password`` and ``hidden`` (at least
    ``csrf_token``, and ``next``). ``demo`` adds the note that demo passwords equal the user
    names."""
    return _page("login.html", status_code=status_code, hidden=hidden, error=error, demo=demo)


def render_consent(*, disclosure: dict[str, Any], hidden: dict[str, str]) -> HTMLResponse:
    """The consent page for ``disclosure``: one form, POST /consent, carrying ``hidden`` and
    two submit buttons ``decision=approve`` and ``decision=reject``."""
    client = disclosure["requesting_client"]
    agent_texts = [disclosure["goal"], *disclosure["stated_constraints"],
                   *disclosure["success_criteria"], client["client_name"], client["client_id"]]
    return _page("consent.html", d=disclosure, hidden=hidden, lang=disclosure["locale"],
                 hidden_chars=hidden_characters(agent_texts))


def render_error(*, status_code: int, error: str, description: str) -> HTMLResponse:
    """An error the browser user should read (the redirect_uri cannot be trusted, a bad CSRF
    token, an unknown request_uri)."""
    return _page("error.html", status_code=status_code, status=status_code, error=error,
                 description=description)


def mount_static(app: FastAPI) -> None:
    """Serve missionbound/web/static at /static (the pages' stylesheet)."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
