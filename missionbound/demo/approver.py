"""A person at the browser, played by a script: signs in through ``/login``, approves a
Mission on the consent page, revokes one in the console. Plain HTTP through the real
server-rendered forms (DESIGN.md "Interfaces": every form carries a hidden ``csrf_token``,
the login form takes ``username`` and ``password``, the consent form ``decision``), so what
the demo shows is what a person's browser does, with the same CSRF checks and audit records.

    callback_url = approve(pending.consent_url, "bob")   # demo password = user name
    mission = client.complete(pending, callback_url)

For several steps as one person (approve, later revoke), keep a :class:`BrowserSession`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

TIMEOUT = 10.0  # seconds, per HTTP request
MAX_REDIRECTS = 5  # /authorize -> /login -> /authorize -> consent: a loop is an error


class ApprovalError(RuntimeError):
    """The forms did not lead where a person's browser would have gone (a refused sign-in,
    an error page, a consent that did not redirect to the client)."""


@dataclass(frozen=True)
class HtmlForm:
    """One ``<form>`` of a page: where it posts and its hidden inputs (csrf_token, ...)."""

    action: str
    method: str
    hidden: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    """Every form of a server-rendered page, with its hidden inputs. The pages are ours and
    simple (no nested forms, inputs inside their form), so a flat scan is enough."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[HtmlForm] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.forms.append(HtmlForm(values.get("action", ""),
                                       values.get("method", "get").lower()))
        elif (tag == "input" and values.get("type") == "hidden" and values.get("name")
              and self.forms):
            self.forms[-1].hidden[values["name"]] = values.get("value", "")


def forms_of(html: str) -> list[HtmlForm]:
    """The forms of ``html``, in page order."""
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


def form_posting_to(page: httpx.Response, path: str) -> HtmlForm:
    """The page's form whose action is ``path`` (relative to the page); ApprovalError when
    there is none (the server answered another page: an error, a sign-in again)."""
    for form in forms_of(page.text):
        if urlsplit(urljoin(str(page.url), form.action)).path == path:
            return form
    raise ApprovalError(f"{page.request.method} {page.url.path} answered "
                        f"{page.status_code} without the {path} form: {_page_text(page)}")


class BrowserSession:
    """One person's browser: a cookie jar on the issuer, never following redirects on its
    own (each hop is checked, and the last one, to the client's redirect URI, is not
    followed at all: the agent's callback is not ours to call)."""

    def __init__(self, user: str, password: str | None = None, *,
                 http: httpx.Client | None = None) -> None:
        self.user = user
        self.password = password if password is not None else user  # the demo tenant's rule
        self._owns_http = http is None
        self.http = http if http is not None else httpx.Client(timeout=TIMEOUT)
        self.signed_in = False

    def approve(self, consent_url: str) -> str:
        """Open ``consent_url`` (``<issuer>/authorize?client_id=..&request_uri=..``), sign in
        when asked to, approve: the full callback URL the browser would land on (with
        ``code``, ``state`` and ``iss``)."""
        return self.decide(consent_url, "approve")

    def reject(self, consent_url: str) -> str:
        """Like :meth:`approve`, rejecting: the callback URL carries ``error=access_denied``."""
        return self.decide(consent_url, "reject")

    def decide(self, consent_url: str, decision: str) -> str:
        page = self._open_consent_page(consent_url)
        form = form_posting_to(page, "/consent")
        answer = self.http.post(urljoin(str(page.url), form.action),
                                data={**form.hidden, "decision": decision},
                                follow_redirects=False)
        location: str | None = answer.headers.get("location")
        if not answer.is_redirect or location is None:
            raise ApprovalError(f"the consent form answered {answer.status_code}, not a "
                                f"redirect to the client: {_page_text(answer)}")
        return urljoin(str(answer.url), location)

    def revoke(self, issuer: str, mission_id: str, reason: str) -> None:
        """Revoke ``mission_id`` the way a person does in the console: the Mission's page,
        its lifecycle form (this session's csrf_token, the version shown), ``revoke`` with a
        reason and the explicit confirmation. ApprovalError when the console refuses."""
        page_url = f"{issuer}/console/missions/{mission_id}"
        page = self.http.get(page_url, follow_redirects=False)
        if page.is_redirect:  # to /login: sign in, then back to the Mission's page
            page = self._follow(page, page_url)
        lifecycle_path = f"/console/missions/{mission_id}/lifecycle"
        form = form_posting_to(page, lifecycle_path)
        answer = self.http.post(urljoin(str(page.url), form.action), data={
            **form.hidden, "operation": "revoke", "reason": reason, "confirm": "yes"},
            follow_redirects=False)
        location = answer.headers.get("location", "")
        done = parse_qs(urlsplit(location).query).get("done")
        if not answer.is_redirect or done != ["revoke"]:
            raise ApprovalError(f"the console refused the revocation ({answer.status_code}): "
                                f"{_page_text(answer)}")

    def _open_consent_page(self, consent_url: str) -> httpx.Response:
        page = self.http.get(consent_url, follow_redirects=False)
        if page.is_redirect:
            page = self._follow(page, consent_url)
        if page.status_code != 200:
            raise ApprovalError(f"no consent page: {page.status_code} {_page_text(page)}")
        return page

    def _follow(self, answer: httpx.Response, target: str) -> httpx.Response:
        """Follow the server's redirects, signing in on the way when it asks, until a page
        (200 or an error) answers."""
        for _ in range(MAX_REDIRECTS):
            if not answer.is_redirect:
                return answer
            location = urljoin(str(answer.url), answer.headers["location"])
            if _origin(location) != _origin(target):
                # To the client (an error redirect, RFC 6749 4.1.2.1): not ours to follow.
                raise ApprovalError(f"redirected away from the issuer, to {location}")
            if urlsplit(location).path == "/login":
                if self.signed_in:
                    raise ApprovalError(f"asked to sign in again as {self.user}")
                answer = self._sign_in(self.http.get(location, follow_redirects=False))
            else:
                answer = self.http.get(location, follow_redirects=False)
        raise ApprovalError(f"too many redirects opening {target}")

    def _sign_in(self, login_page: httpx.Response) -> httpx.Response:
        form = form_posting_to(login_page, "/login")
        answer = self.http.post(urljoin(str(login_page.url), form.action), data={
            **form.hidden, "username": self.user, "password": self.password},
            follow_redirects=False)
        if not answer.is_redirect:  # the login page again, with its error
            raise ApprovalError(f"signing in as {self.user} failed: {_page_text(answer)}")
        self.signed_in = True
        return answer

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def approve(consent_url: str, user: str, *, password: str | None = None) -> str:
    """Sign in as ``user`` (demo tenant: the password is the user name) and approve the
    Mission at ``consent_url``: the callback URL the browser would land on, for
    ``MissionClient.complete``. Works for any consent URL of the form
    ``<issuer>/authorize?client_id=..&request_uri=..`` (the SDK's ``pending.consent_url``,
    examples/agent.py's ``--approve-as``)."""
    with BrowserSession(user, password) as browser:
        return browser.approve(consent_url)


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _page_text(answer: httpx.Response, limit: int = 300) -> str:
    """What a person would read of an answer: its alert or title, else its start."""
    text = answer.text
    for start_marker, end_marker in (('role="alert">', "<"), ("<title>", "<")):
        start = text.find(start_marker)
        if start >= 0:
            start += len(start_marker)
            return text[start:text.find(end_marker, start)].strip()[:limit]
    return " ".join(text.split())[:limit]
