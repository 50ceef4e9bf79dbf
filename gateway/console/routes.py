"""The console's HTTP side: sign-in (a pasted token, or through the IdP with OpenID Connect)
and sign-out, the session cookie, CSRF checks, security headers, and one thin handler per page
or form (``pages.Console`` decides everything else).

Every change is a plain form POST answered with a redirect (POST-redirect-GET), carrying its
outcome to the next page as a one-time notice; the only exception is a new key's secret,
shown once in the answer to the POST that made it and never stored. Errors on console pages
are rendered as HTML pages here rather than as the API's JSON, since a person reads them:
a page that does not exist or belongs to another team is a 404, a form without the session's
CSRF token a 403.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.auth.principal import Principal
from gateway.console import cookies, csrf
from gateway.console.identity import Identity, KeyRecheck, TokenSignIn
from gateway.console.oidc_sign_in import PENDING_S, OidcSignIn
from gateway.console.pages import Console, Viewer
from gateway.console.render import STATIC, Renderer
from gateway.console.sessions import Session, SessionStore
from gateway.errors import AuthenticationFailed, GatewayError, NotFound, QuotaExceeded
from gateway.videos import content_type
from gateway.videos.routes import content_headers, send_content
from gateway.web.asgi import Receive, Scope, Send

log = logging.getLogger("gateway.console")

BASE = "/console"
SIGN_IN_PATH = BASE + "/sign-in"
SIGN_IN_NONCE_S = 1800  # how long a sign-in form stays usable
_SESSION, _SIGN_IN, _OIDC = "console-session", "console-sign-in", "console-oidc"  # signing purposes
OIDC_START_PATH = BASE + "/oidc/start"
OIDC_CALLBACK_PATH = BASE + "/oidc/callback"
# What the sign-in page says after a refused sign-in through the IdP (?problem=<key>).
OIDC_PROBLEMS = {
    "denied": "The identity provider did not sign you in (it refused, or the sign-in was "
    "cancelled).",
    "expired": "That sign-in was already used, has expired, or was started in another "
    "browser; please sign in again.",
    "unavailable": "Signing in through the identity provider is not possible right now; try "
    "again shortly, or sign in with a token.",
    "no_team": "Your account at the identity provider names no team, so the console cannot "
    "tell what to show you; ask an admin to give your account a team.",
    "expires_soon": "The identity provider's sign-in expires within a minute; please sign in "
    "again.",
    "busy": "Your team has reached its request rate (the console counts like the API); "
    "try again in a minute.",
    "refused": "The identity provider's answer was not accepted; please sign in again. If "
    "this keeps happening, tell an admin (the gateway logs why).",
}
_OIDC_PROBLEM_BY_REASON = {
    "oidc_denied": "denied",
    "oidc_state": "expired",
    "oidc_unavailable": "unavailable",
    "no_team": "no_team",
    "bad_team": "no_team",
    "expires_soon": "expires_soon",
    "rate_limited": "busy",
}
MAX_FORM_FIELDS = 40
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}
# A job's content opened as a document: nothing loads and nothing runs, but the browser's own
# player page for a video opened in a tab of its own may load it. No allow-scripts: inert.
CONTENT_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; sandbox allow-same-origin"
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


@dataclass(frozen=True)
class Ctx:
    """One request to a signed-in page."""

    request: Request
    session: Session
    viewer: Viewer
    form: Mapping[str, str]

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])


Handler = Callable[[Ctx], Awaitable[Response]]


class ConsoleRoutes:
    def __init__(
        self,
        console: Console,
        *,
        sessions: SessionStore,
        sign_in: TokenSignIn,
        key_check: KeyRecheck,
        renderer: Renderer,
        secret: bytes,
        session_hours: float,
        secure_cookies: bool,
        clock: Callable[[], float],
        on_sign_in: Callable[[str], None] = lambda outcome: None,
        oidc: OidcSignIn | None = None,
        rate: Callable[[Principal], Awaitable[object]] | None = None,
    ) -> None:
        self.console = console
        self.sessions = sessions
        self.sign_in = sign_in
        self.key_check = key_check
        self.renderer = renderer
        self.secret = secret
        self.session_s = session_hours * 3600
        self.secure = secure_cookies
        self.clock = clock
        self.on_sign_in = on_sign_in
        self.oidc = oidc
        self.rate = rate
        self.static = {
            p.name: (p.read_bytes(), _STATIC_TYPES[p.suffix])
            for p in STATIC.iterdir()
            if p.suffix in _STATIC_TYPES
        }

    # -- plumbing ----------------------------------------------------------------------------

    def html(
        self,
        template: str,
        context: Mapping[str, Any],
        *,
        status: int = 200,
        session: Session | None = None,
        viewer: Viewer | None = None,
    ) -> Response:
        flash = session.flash if session is not None else None
        kind, _, text = (flash or "").partition(":")
        body = self.renderer.page(
            template,
            {
                "viewer": viewer,
                "csrf_token": session.csrf if session is not None else "",
                "flash": {"kind": kind, "text": text} if flash else None,
                "csrf_field": csrf.FIELD,
                "nav": "",
                **context,
            },
        )
        return Response(body, status, headers=SECURITY_HEADERS, media_type="text/html")

    def redirect(self, url: str) -> Response:
        return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)

    def error_page(
        self, exc: GatewayError, session: Session | None = None, viewer: Viewer | None = None
    ) -> Response:
        titles = {
            403: "Not allowed",
            404: "Not found",
            429: "Too many requests",
            503: "Unavailable",
        }
        response = self.html(
            "error.html",
            {
                "status": exc.status,
                "title": titles.get(exc.status, "Error"),
                "message": exc.message,
            },
            status=exc.status,
            session=session,
            viewer=viewer,
        )
        for name in ("retry-after", "retry-after-ms"):
            if name in exc.headers:
                response.headers[name] = exc.headers[name]
        return response

    async def admit(self, principal: Principal) -> None:
        """Count one console request (a sign-in, a page, a form, a video) against the team's
        request rate, and a gateway key's, exactly as an API call is counted: the console is
        no way around the rate. Raises ``QuotaExceeded`` past it (``StoreUnavailable`` when
        Redis cannot say and rate checks fail closed)."""
        if self.rate is not None:
            await self.rate(principal)

    async def current(self, request: Request) -> Session | None:
        """The request's live session, or None. A session made with a gateway key that no
        longer authenticates is ended here."""
        signed = cookies.read(request.headers.get("cookie"), cookies.SESSION)
        session_id = cookies.unsign(self.secret, _SESSION, signed)
        if session_id is None:
            return None
        session = await self.sessions.get(session_id, take_flash=request.method == "GET")
        if session is None:
            return None
        if session.key_id is not None:
            record = await self.key_check.current(
                session.key_id, session.key_digest, session.pepper_mark
            )
            if record is None:
                await self.sessions.delete(session_id)
                return None
            # The session acts as the key does on the API: with its scope (a key that may
            # not manage keys may not here either) and its roles as they are now.
            session = replace(session, principal=Principal.of_key(record))
        # The access log and the request metrics name the signed-in team.
        request.scope["principal"] = session.principal
        return session

    async def read_form(self, request: Request) -> dict[str, str]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
            return {}
        form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS)
        try:
            return {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
        finally:
            await form.close()

    def page(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """A signed-in page or form: no session, to the sign-in page; a POST whose CSRF token
        is not the session's, 403; errors as pages, or for a form as a notice on the page it
        came from."""

        async def endpoint(request: Request) -> Response:
            session = await self.current(request)
            if session is None:
                return self.redirect(SIGN_IN_PATH)
            viewer = self.console.viewer(session.principal)
            try:
                await self.admit(session.principal)
            except GatewayError as exc:
                return self.error_page(exc, session, viewer)
            form: dict[str, str] = {}
            if request.method == "POST":
                form = await self.read_form(request)
                if not csrf.matches(session.csrf, form.get(csrf.FIELD)):
                    return self.error_page(_csrf_refused(), session, viewer)
            ctx = Ctx(request, session, viewer, form)
            try:
                return await handler(ctx)
            except NotFound as exc:
                return self.error_page(exc, session, viewer)
            except GatewayError as exc:
                back = form.get("back", "")
                if request.method == "POST" and back.startswith(BASE + "/") and exc.status < 500:
                    await self.sessions.flash(session, f"error:{exc.message}")
                    return self.redirect(back)
                return self.error_page(exc, session, viewer)

        return endpoint

    def render(self, ctx: Ctx, template: str, context: Mapping[str, Any], **kw: Any) -> Response:
        return self.html(template, context, session=ctx.session, viewer=ctx.viewer, **kw)

    async def done(self, ctx: Ctx, message: str, url: str) -> Response:
        await self.sessions.flash(ctx.session, f"ok:{message}")
        return self.redirect(url)

    # -- sign-in -----------------------------------------------------------------------------

    def _sign_in_form(self, *, status: int = 200, problem: str | None = None) -> Response:
        nonce = csrf.new_token()
        context = {
            "nonce": nonce,
            "problem": problem,
            "oidc_name": self.oidc.name if self.oidc is not None else None,
        }
        response = self.html("sign_in.html", context, status=status)
        response.headers.append(
            "set-cookie",
            cookies.set_header(
                cookies.SIGN_IN,
                cookies.sign(self.secret, _SIGN_IN, nonce),
                max_age=SIGN_IN_NONCE_S,
                secure=self.secure,
            ),
        )
        return response

    async def sign_in_page(self, request: Request) -> Response:
        if await self.current(request) is not None:
            return self.redirect(BASE)
        # Only a fixed message, chosen by key: the page never repeats what a URL says.
        problem = OIDC_PROBLEMS.get(request.query_params.get("problem", ""))
        return self._sign_in_form(problem=problem)

    async def sign_in_post(self, request: Request) -> Response:
        form = await self.read_form(request)
        signed = cookies.read(request.headers.get("cookie"), cookies.SIGN_IN)
        nonce = cookies.unsign(self.secret, _SIGN_IN, signed)
        if not csrf.matches(nonce, form.get(csrf.FIELD)):
            # A stale form (or a forged one): a fresh form says what to do.
            return self._sign_in_form(
                status=403, problem="This sign-in form has expired; please sign in again."
            )
        try:
            identity = await self.sign_in.identify(form.get("token", ""))
        except AuthenticationFailed as exc:
            self.on_sign_in(exc.reason)
            return self._sign_in_form(
                status=401,
                problem="That token was not accepted: it is not a valid company JWT or "
                "gateway API key, or it has expired or been revoked.",
            )
        try:
            cookie = await self._new_session(request, identity)
        except GatewayError as exc:  # the team's request rate, or Redis failing closed
            self.on_sign_in(
                "rate_limited" if isinstance(exc, QuotaExceeded) else "store_unavailable"
            )
            return self._sign_in_form(status=exc.status, problem=exc.message)
        if cookie is None:
            self.on_sign_in("expires_soon")
            return self._sign_in_form(
                status=401, problem="That token expires within a minute; use a fresher one."
            )
        self.on_sign_in("ok")
        response = self.redirect(BASE)
        response.headers.append("set-cookie", cookie)
        response.headers.append(
            "set-cookie", cookies.clear_header(cookies.SIGN_IN, secure=self.secure)
        )
        return response

    async def _new_session(self, request: Request, identity: Identity) -> str | None:
        """A session for ``identity``, as the ``Set-Cookie`` value that hands it to the
        browser; None when what proved the identity expires within a minute. However the
        person signed in, the session is this one."""
        # A new sign-in replaces the browser's old session, if any (no session fixation).
        old = cookies.unsign(
            self.secret, _SESSION, cookies.read(request.headers.get("cookie"), cookies.SESSION)
        )
        if old is not None:
            await self.sessions.delete(old)
        now = self.clock()
        lifetime = self.session_s
        if identity.valid_until is not None:
            lifetime = min(lifetime, identity.valid_until - now)
        if lifetime < 60:
            return None
        await self.admit(identity.principal)  # each sign-in is a request of its team
        session = await self.sessions.create(
            identity.principal,
            lifetime_s=lifetime,
            key_id=identity.key_id,
            key_digest=identity.key_digest,
            pepper_mark=identity.pepper_mark,
        )
        return cookies.set_header(
            cookies.SESSION,
            cookies.sign(self.secret, _SESSION, session.id),
            max_age=int(lifetime),
            secure=self.secure,
        )

    # -- sign-in through the IdP (OpenID Connect) ----------------------------------------------

    def _oidc_refused(self, reason: str) -> Response:
        """Back to the sign-in page, saying why in plain words; counted, never a 500."""
        self.on_sign_in(reason)
        log.info("console sign-in through the IdP refused: %s", reason)
        problem = _OIDC_PROBLEM_BY_REASON.get(reason, "refused")
        response = self.redirect(f"{SIGN_IN_PATH}?problem={problem}")
        response.headers.append("set-cookie", self._oidc_cookie("", max_age=0))
        return response

    def _oidc_cookie(self, value: str, *, max_age: int) -> str:
        return cookies.set_header(
            cookies.OIDC,
            value,
            max_age=max_age,
            secure=self.secure,
            path=cookies.OIDC_PATH,
            same_site="Lax",
        )

    async def oidc_start(self, request: Request) -> Response:
        assert self.oidc is not None  # routed only when configured
        try:
            started = await self.oidc.begin()
        except AuthenticationFailed as exc:
            return self._oidc_refused(exc.reason)
        except GatewayError:  # Redis unreachable: a page that says so, not the API's JSON
            return self._oidc_refused("oidc_unavailable")
        # The one redirect out of the console: to the discovered authorization endpoint.
        response = self.redirect(started.url)
        signed = cookies.sign(self.secret, _OIDC, started.binding)
        response.headers.append("set-cookie", self._oidc_cookie(signed, max_age=PENDING_S))
        return response

    async def oidc_callback(self, request: Request) -> Response:
        assert self.oidc is not None
        answer: dict[str, str] = {}
        for name, value in request.query_params.multi_items():
            if name in answer:  # RFC 6749: no parameter twice; which one would count?
                return self._oidc_refused("oidc_state")
            answer[name] = value
        signed = cookies.read(request.headers.get("cookie"), cookies.OIDC)
        binding = cookies.unsign(self.secret, _OIDC, signed)
        try:
            identity = await self.oidc.finish(answer, binding)
            cookie = await self._new_session(request, identity)
        except AuthenticationFailed as exc:
            return self._oidc_refused(exc.reason)
        except QuotaExceeded:
            return self._oidc_refused("rate_limited")
        except GatewayError:
            return self._oidc_refused("oidc_unavailable")
        if cookie is None:
            return self._oidc_refused("expires_soon")
        self.on_sign_in("ok")
        # A page rather than a redirect: this request came from the IdP's site, and a browser
        # keeps a SameSite=Strict cookie off every hop of such a navigation, so a redirect to
        # /console would arrive without the new session. The page's own navigation is ours.
        response = self.html("signed_in.html", {"next": BASE})
        response.headers.append("set-cookie", cookie)
        response.headers.append("set-cookie", self._oidc_cookie("", max_age=0))
        response.headers.append(
            "set-cookie", cookies.clear_header(cookies.SIGN_IN, secure=self.secure)
        )
        return response

    async def sign_out(self, ctx: Ctx) -> Response:
        await self.sessions.delete(ctx.session.id)
        response = self.redirect(SIGN_IN_PATH)
        response.headers.append(
            "set-cookie", cookies.clear_header(cookies.SESSION, secure=self.secure)
        )
        return response

    # -- pages -------------------------------------------------------------------------------

    async def overview(self, ctx: Ctx) -> Response:
        data = await self.console.overview(ctx.viewer)
        return self.render(ctx, "overview.html", {"nav": "overview", **data})

    async def teams(self, ctx: Ctx) -> Response:
        data = await self.console.teams(ctx.viewer)
        return self.render(ctx, "teams.html", {"nav": "teams", **data})

    async def team(self, ctx: Ctx) -> Response:
        params = ctx.request.query_params
        data = await self.console.team(ctx.viewer, ctx.param("team"), params)
        q = data["query"]
        csv = f"{BASE}/teams/{data['team']}/usage.csv?" + urlencode(
            {"from": q.first.isoformat(), "to": q.last.isoformat()}
        )
        return self.render(ctx, "team.html", {"nav": "teams", "csv_url": csv, **data})

    async def usage_csv(self, ctx: Ctx) -> Response:
        name, text = await self.console.usage_csv(
            ctx.viewer, ctx.param("team"), ctx.request.query_params
        )
        return Response(
            text,
            media_type="text/csv; charset=utf-8",
            headers={
                **SECURITY_HEADERS,
                "content-disposition": f'attachment; filename="{name}"',
            },
        )

    def _team_url(self, team: str) -> str:
        return f"{BASE}/teams/{team}"

    async def set_limits(self, ctx: Ctx) -> Response:
        team = ctx.param("team")
        await self.console.set_limits(ctx.viewer, team, ctx.form)
        return await self.done(ctx, f"Limits of team {team} saved.", self._team_url(team))

    async def clear_limits(self, ctx: Ctx) -> Response:
        team = ctx.param("team")
        await self.console.clear_limits(ctx.viewer, team)
        return await self.done(
            ctx,
            f"Overrides of team {team} removed: the config's limits apply.",
            self._team_url(team),
        )

    async def reset_confirm(self, ctx: Ctx) -> Response:
        team = ctx.param("team")
        window = ctx.request.query_params.get("window", "day")
        effect = self.console.reset_effect(ctx.viewer, team, window)
        return self.render(
            ctx,
            "confirm.html",
            {
                "nav": "teams",
                "title": f"Reset usage of team {team}?",
                "effect": effect,
                "action": f"{BASE}/teams/{team}/reset",
                "fields": {"window": window},
                "button": f"Reset {window} usage",
                "cancel": self._team_url(team),
            },
        )

    async def reset(self, ctx: Ctx) -> Response:
        team = ctx.param("team")
        window = ctx.form.get("window", "")
        await self.console.reset_usage(ctx.viewer, team, window)
        return await self.done(ctx, f"Usage of team {team} reset ({window}).", self._team_url(team))

    async def create_key(self, ctx: Ctx) -> Response:
        team = ctx.param("team")
        made = await self.console.create_key(ctx.viewer, team, ctx.form)
        return self._secret_page(ctx, team, made, "created")

    def _secret_page(self, ctx: Ctx, team: str, key: Mapping[str, Any], verb: str) -> Response:
        return self.render(
            ctx,
            "key_secret.html",
            {"nav": "teams", "team": team, "key": key, "verb": verb, "back": self._team_url(team)},
            status=201 if verb == "created" else 200,
        )

    async def key_confirm(self, ctx: Ctx) -> Response:
        team, key_id, action = ctx.param("team"), ctx.param("id"), ctx.param("action")
        key = await self.console.api_key(ctx.viewer, team, key_id)
        if action == "revoke":
            effect = (
                f"The key '{key['name']}' ({key['prefix']}…) of team {team} stops working on "
                "every replica within a second; services using it get 401 from then on. This "
                "cannot be undone."
            )
            fields: dict[str, str] = {}
        elif action == "rotate":
            effect = (
                f"The key '{key['name']}' of team {team} gets a new secret, shown once on the "
                "next page. The old secret keeps working for the grace period below, then "
                "stops."
            )
            fields = {"grace_hours": "24"}
        else:
            raise NotFound()
        return self.render(
            ctx,
            "confirm.html",
            {
                "nav": "teams",
                "title": f"{action.capitalize()} the API key '{key['name']}'?",
                "effect": effect,
                "action": f"{BASE}/teams/{team}/api-keys/{key_id}/{action}",
                "fields": fields,
                "editable": action == "rotate",
                "button": f"{action.capitalize()} key",
                "cancel": self._team_url(team),
            },
        )

    async def key_action(self, ctx: Ctx) -> Response:
        team, key_id, action = ctx.param("team"), ctx.param("id"), ctx.param("action")
        if action == "revoke":
            key = await self.console.revoke_key(ctx.viewer, team, key_id)
            return await self.done(
                ctx, f"API key '{key['name']}' revoked.", self._team_url(team) + "#api-keys"
            )
        if action == "rotate":
            key = await self.console.rotate_key(ctx.viewer, team, key_id, ctx.form)
            return self._secret_page(ctx, team, key, "rotated")
        raise NotFound()

    async def jobs(self, ctx: Ctx) -> Response:
        data = await self.console.jobs(ctx.viewer, ctx.request.query_params)
        return self.render(ctx, "jobs.html", {"nav": "jobs", **data})

    async def job(self, ctx: Ctx) -> Response:
        rid = str(ctx.request.scope.get("request_id", ""))
        data = await self.console.job(ctx.viewer, ctx.param("id"), request_id=rid)
        return self.render(ctx, "job.html", {"nav": "jobs", **data})

    async def upstream_keys(self, ctx: Ctx) -> Response:
        data = await self.console.upstream_keys(ctx.viewer)
        return self.render(ctx, "keys.html", {"nav": "keys", **data})

    async def upstream_key_confirm(self, ctx: Ctx) -> Response:
        key_id, action = ctx.param("id"), ctx.param("action")
        await self.console.upstream_key(ctx.viewer, key_id)  # 404 for an unknown id
        if action == "disable":
            effect = (
                f"The upstream key '{key_id}' is taken out of rotation on every replica: no new "
                "call uses it until it is enabled again. Calls go to the other keys; with none "
                "left, every team's calls fail."
            )
        elif action == "enable":
            effect = (
                f"The upstream key '{key_id}' goes back into rotation on every replica. This "
                "also lifts a quarantine or a cooldown, so make sure the key works."
            )
        else:
            raise NotFound()
        return self.render(
            ctx,
            "confirm.html",
            {
                "nav": "keys",
                "title": f"{action.capitalize()} the upstream key '{key_id}'?",
                "effect": effect,
                "action": f"{BASE}/keys/{key_id}/{action}",
                "fields": {},
                "button": f"{action.capitalize()} key",
                "cancel": BASE + "/keys",
            },
        )

    async def upstream_key_action(self, ctx: Ctx) -> Response:
        key_id, action = ctx.param("id"), ctx.param("action")
        if action not in ("enable", "disable"):
            raise NotFound()
        await self.console.set_upstream_key(ctx.viewer, key_id, enabled=action == "enable")
        return await self.done(ctx, f"Upstream key '{key_id}' {action}d.", BASE + "/keys")

    async def audit(self, ctx: Ctx) -> Response:
        data = await self.console.audit(ctx.viewer, ctx.request.query_params)
        older = None
        if data["next_before"] is not None:
            query = {k: v for k, v in data["filters"].items() if v}
            older = f"{BASE}/audit?" + urlencode({**query, "before": data["next_before"]})
        return self.render(ctx, "audit.html", {"nav": "audit", "older": older, **data})

    async def to_overview(self, request: Request) -> Response:
        return self.redirect(BASE)

    async def not_found(self, ctx: Ctx) -> Response:
        raise NotFound("There is no such page in the console.")

    async def static_file(self, request: Request) -> Response:
        found = self.static.get(str(request.path_params["name"]))
        if found is None:
            return Response("not found", 404, headers={"x-content-type-options": "nosniff"})
        body, ctype = found
        headers = {"cache-control": "public, max-age=300", "x-content-type-options": "nosniff"}
        return Response(body, media_type=ctype, headers=headers)

    async def content(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A completed job's video, streamed from the upstream through the video service
        (ranges passed on, never buffered), for the job page's ``<video>``."""
        request = Request(scope, receive)
        session = await self.current(request)
        if session is None:
            await self.redirect(SIGN_IN_PATH)(scope, receive, send)
            return
        viewer = self.console.viewer(session.principal)
        video_id = str(request.path_params["id"])
        try:
            await self.admit(session.principal)
            who: Principal = await self.console.content_principal(viewer, video_id)
            job, resp = await self.console.videos.open_content(
                who,
                video_id,
                variant=None,
                headers=tuple(scope["headers"]),
                request_id=str(scope.get("request_id", "")),
            )
        except GatewayError as exc:
            await self.error_page(exc, session, viewer)(scope, receive, send)
            return
        # Shown in the page only as one allowed media type, sent as our own header: anything
        # else (an upstream or a CDN answering text/html, SVG or a list of types) stays opaque
        # bytes in an attachment, never a page on our origin. The policy and the sandbox hold
        # even if a browser renders it anyway; a <video> loading it is not bound by them.
        inline = content_type.inline_type(resp.raw_headers)
        replaced = {b"content-type", b"x-content-type-options"}
        if inline is not None:
            replaced.add(b"content-disposition")
        headers = [(k, v) for k, v in content_headers(resp, job, None) if k not in replaced]
        headers += [
            (b"content-type", (inline or content_type.OPAQUE).encode()),
            (b"content-security-policy", CONTENT_CSP.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
        ]
        await send_content(resp, scope, receive, send, headers)

    # -- the table ---------------------------------------------------------------------------

    def routes(self) -> list[BaseRoute]:
        p = self.page
        get, post = ["GET"], ["POST"]
        return [
            Route(BASE, p(self.overview), methods=get),
            Route(BASE + "/", self.to_overview, methods=get),
            Route(SIGN_IN_PATH, self.sign_in_page, methods=get),
            Route(SIGN_IN_PATH, self.sign_in_post, methods=post),
            *(
                [
                    Route(OIDC_START_PATH, self.oidc_start, methods=get),
                    Route(OIDC_CALLBACK_PATH, self.oidc_callback, methods=get),
                ]
                if self.oidc is not None
                else []
            ),
            Route(BASE + "/sign-out", p(self.sign_out), methods=post),
            Route(BASE + "/static/{name}", self.static_file, methods=get),
            Route(BASE + "/teams", p(self.teams), methods=get),
            Route(BASE + "/teams/{team}", p(self.team), methods=get),
            Route(BASE + "/teams/{team}/usage.csv", p(self.usage_csv), methods=get),
            Route(BASE + "/teams/{team}/limits", p(self.set_limits), methods=post),
            Route(BASE + "/teams/{team}/limits/clear", p(self.clear_limits), methods=post),
            Route(BASE + "/teams/{team}/reset", p(self.reset_confirm), methods=get),
            Route(BASE + "/teams/{team}/reset", p(self.reset), methods=post),
            Route(BASE + "/teams/{team}/api-keys", p(self.create_key), methods=post),
            Route(BASE + "/teams/{team}/api-keys/{id}/{action}", p(self.key_confirm), methods=get),
            Route(BASE + "/teams/{team}/api-keys/{id}/{action}", p(self.key_action), methods=post),
            Route(BASE + "/jobs", p(self.jobs), methods=get),
            Route(BASE + "/jobs/{id}", p(self.job), methods=get),
            Route(BASE + "/jobs/{id}/content", _AsgiEndpoint(self.content), methods=get),
            Route(BASE + "/keys", p(self.upstream_keys), methods=get),
            Route(BASE + "/keys/{id}/{action}", p(self.upstream_key_confirm), methods=get),
            Route(BASE + "/keys/{id}/{action}", p(self.upstream_key_action), methods=post),
            Route(BASE + "/audit", p(self.audit), methods=get),
            # Anything else under /console is the console's 404, never the API's pass-through.
            Route(BASE + "/{rest:path}", p(self.not_found), methods=["GET", "POST", "HEAD"]),
        ]


def unconfigured_routes() -> list[BaseRoute]:
    """What /console answers when it is enabled without a session secret: how to fix it."""

    async def explain(request: Request) -> Response:
        return Response(
            "The console is not configured: set GATEWAY_CONSOLE_SECRET (console.session_secret, "
            "at least 32 bytes, the same on every replica), or console.enabled: false.\n",
            503,
            media_type="text/plain",
            headers={"cache-control": "no-store"},
        )

    return [Route(BASE, explain), Route(BASE + "/{rest:path}", explain)]


def _csrf_refused() -> GatewayError:
    return GatewayError(
        "This form was not sent from a console page of your session (its CSRF token is "
        "missing or wrong). Reload the page and try again.",
        code="csrf_failed",
        status=403,
    )


class _AsgiEndpoint:
    """Starlette treats a non-function endpoint as a raw ASGI app: the content route needs
    ``receive`` to notice a viewer who stops watching."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
