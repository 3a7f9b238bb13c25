"""The dashboard's login side: who a request comes from (a bearer token, or the cookie of
a session), the login page, logging in with a token or a login link, and logging out."""

from __future__ import annotations

import hmac
import html
import os

from aiohttp import web

from .logins import LoginLimiter, Sessions, TooManyLogins

COOKIE = "aray_session"
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>aray dashboard: log in</title><link rel="stylesheet" href="/static/style.css"></head>
<body class="login"><main class="login-box">
<h1>aray dashboard</h1>
<p>Log in with the cluster's token. <code>aray dashboard</code> prints a link that logs in at
once; the token is also in the session's <code>token</code> file.</p>
{error}
<form method="post" action="/login">
<label for="token">Token</label>
<input id="token" name="token" type="password" autocomplete="current-password" autofocus required>
<button type="submit">Log in</button>
</form></main></body></html>
"""


def _redirect(to: str) -> web.Response:
    return web.Response(status=303, headers={"Location": to})


class LoginPages:
    """What :class:`~aray._head.dashboard.Dashboard` does to tell who is logged in, and
    its login and logout pages; it needs ``_token`` (the cluster's, as bytes),
    ``_sessions`` and ``_limiter``."""

    _token: bytes
    _sessions: Sessions
    _limiter: LoginLimiter

    def _token_ok(self, request: web.Request, token: str) -> bool:
        """Whether ``token`` is the cluster's; a wrong one counts against the client's
        address. Raises TooManyLogins, whatever the token, while that address must wait."""
        address = request.remote or ""
        wait = self._limiter.retry_after(address)
        if wait > 0:
            raise TooManyLogins(wait)
        # headers with bytes that are not UTF-8 come as surrogates: compare, never raise
        if hmac.compare_digest(token.encode("utf-8", "surrogatepass"), self._token):
            return True
        self._limiter.failed(address)
        return False

    def _session_of(self, request: web.Request) -> str:
        """The id of the live session the request's cookie names, or ``""``."""
        session = request.cookies.get(COOKIE, "")
        return session if session and self._sessions.valid(session) else ""

    def _who(self, request: web.Request) -> str | None:
        """None for a stranger; ``""`` for the holder of a bearer token; else the id of the
        session its cookie names."""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return "" if self._token_ok(request, auth[7:].strip()) else None
        return self._session_of(request) or None

    def _authorized(self, request: web.Request) -> bool:
        """Whether the request holds the token or a live session (see _who)."""
        return self._who(request) is not None

    def _login_page(self, error: str = "", status: int = 401,
                    headers: dict | None = None) -> web.Response:
        shown = f'<p class="error">{html.escape(error)}</p>' if error else ""
        return web.Response(text=LOGIN_PAGE.format(error=shown), status=status,
                            content_type="text/html", headers=headers)

    def _logged_in(self) -> web.Response:
        """A redirect to the dashboard that sets the cookie of a new session."""
        response = _redirect("/")
        response.set_cookie(COOKIE, self._sessions.create(), httponly=True, samesite="Strict",
                            path="/", max_age=int(self._sessions.ttl))
        return response

    async def _index(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token")
        if token is not None:  # a login link: trade the token for the cookie, and drop it
            if self._token_ok(request, token):
                return self._logged_in()
            return self._login_page("The token in that link is not the token of this cluster.")
        if not self._authorized(request):
            return self._login_page()
        return web.FileResponse(os.path.join(STATIC_DIR, "index.html"))

    async def _login_form(self, request: web.Request) -> web.Response:
        if self._authorized(request):
            return _redirect("/")
        return self._login_page(status=200)

    async def _login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        if self._token_ok(request, token):
            return self._logged_in()
        return self._login_page("Wrong token: that is not the token of this cluster.")

    async def _logout(self, request: web.Request) -> web.Response:
        # the session ends here, not only in this browser: a copy of the cookie is refused
        self._sessions.revoke(request.cookies.get(COOKIE, ""))
        response = _redirect("/")
        response.del_cookie(COOKIE, path="/")
        return response
