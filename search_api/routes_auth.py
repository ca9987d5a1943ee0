"""Sign-in and sign-out for the page (session cookie + CSRF token), who am I, and the one-time sign-in link."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from promptdex import accounts
from promptdex.accounts import User
from promptdex.errors import Unauthorized
from promptdex.safety import role_levels
from search_api.deps import State
from search_api.errors import responses
from search_api.schemas import Login, Me, SafeModes, UserOut
from search_api.security import CSRF_COOKIE, SESSION_COOKIE, AnyCaller, Caller

router = APIRouter(tags=["auth"], responses=responses())

_WRONG = "sign-in failed: unknown user or wrong password"


def me(caller: Caller, state: State, csrf: str | None = None) -> Me:
    user = UserOut(name=caller.user.name, role=caller.user.role.value) if caller.user else None
    via = caller.via if caller.via in ("token", "session") else "anonymous"
    default, levels = role_levels(caller.role_name, state.settings.safety)
    return Me(user=user, via=via, anonymous=state.settings.api.anonymous.value,  # type: ignore[arg-type]
              csrf_token=csrf or caller.csrf,
              safe=SafeModes(default=default.value, levels=[level.value for level in levels]))  # type: ignore[misc]


def _set_session(request: Request, response: Response, state: State, user: User) -> str:
    """Start a session for `user` and set its cookies; returns the CSRF token."""
    days = state.settings.api.session_days
    with state.pool.connection() as conn:
        session_id, csrf = accounts.create_session(conn, user_id=user.id, days=days)
    secure = request.url.scheme == "https"
    age = int(days * 86400)
    response.set_cookie(SESSION_COOKIE, session_id, max_age=age, httponly=True, samesite="lax", secure=secure,
                        path="/")
    response.set_cookie(CSRF_COOKIE, csrf, max_age=age, httponly=False, samesite="lax", secure=secure, path="/")
    return csrf


@router.get("/api/auth/me", response_model=Me)
def who_am_i(caller: AnyCaller, state: State) -> Me:
    """The caller's user and role (null when anonymous), and what anonymous callers may do here."""
    return me(caller, state)


@router.post("/api/auth/login", response_model=Me)
def login(request: Request, response: Response, state: State, caller: AnyCaller, body: Login) -> Me:
    """Sign in with a name and password: sets the session cookie (HttpOnly) and the CSRF cookie."""
    state.limits.login_attempt(caller.address)
    with state.pool.connection() as conn:
        user = accounts.verify_password(conn, name=body.name, password=body.password)
    if user is None:
        raise Unauthorized(_WRONG)
    csrf = _set_session(request, response, state, user)
    return me(Caller(user, "session", caller.address, csrf), state)


@router.post("/api/auth/logout", status_code=204, response_class=Response)
def logout(request: Request, state: State, caller: AnyCaller) -> Response:
    """End the browser session (the CSRF token must be sent) and clear its cookies."""
    session = request.cookies.get(SESSION_COOKIE)
    if session and caller.via == "session":
        with state.pool.connection() as conn:
            accounts.end_session(conn, session_id=session)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/auth/link", status_code=303, response_class=RedirectResponse,
            responses={303: {"description": "Signed in: the session cookie is set; on to the page."}})
async def sign_in_link(request: Request, state: State, caller: AnyCaller,
                       token: Annotated[str, Query(min_length=1, max_length=200,
                                                   description="The token of the link `serve` printed.")]
                       ) -> RedirectResponse:
    """The one-time sign-in link printed by `promptdex serve` on loopback: it works once, then never again."""
    state.limits.login_attempt(caller.address)

    def spend() -> User | None:
        with state.pool.connection() as conn:
            return accounts.use_login_link(conn, token=token)

    user = await run_in_threadpool(spend)
    if user is None:
        raise Unauthorized("sign-in link: it is unknown, expired or already used; restart `promptdex serve` "
                           "for a new one")
    response = RedirectResponse("/", status_code=303)
    await run_in_threadpool(_set_session, request, response, state, user)
    return response
