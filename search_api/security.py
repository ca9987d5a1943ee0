"""Who is calling: a Bearer token, a browser session (with its CSRF token), or nobody; what their role allows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from promptdex import accounts
from promptdex.accounts import Role, User
from promptdex.errors import Forbidden, NotFound, Unauthorized
from promptdex.records import Image
from promptdex.safety import resolve_level, role_levels, shown_at
from promptdex.settings import AnonymousAccess, SafeLevel
from search_api.deps import State
from search_api.middleware import SAFE_METHODS, split_list
from search_api.service import SearchService
from search_api.state import AppState

SESSION_COOKIE = "promptdex_session"
CSRF_COOKIE = "promptdex_csrf"
CSRF_HEADER = "X-CSRF-Token"

bearer_scheme = HTTPBearer(auto_error=False, description="An API token from `promptdex token create NAME`.")
cookie_scheme = APIKeyCookie(name=SESSION_COOKIE, auto_error=False,
                             description="The browser session set by POST /api/auth/login (send X-CSRF-Token "
                                         "with every state-changing request).")


@dataclass(frozen=True)
class Caller:
    """The caller of one request. `user` is None for an anonymous caller."""

    user: User | None
    via: str  # "token", "session" or "anonymous"
    address: str
    csrf: str | None = None

    @property
    def role(self) -> Role | None:
        return self.user.role if self.user else None

    @property
    def key(self) -> str:
        """Whose rate this request counts against: the user, or the client address of an anonymous call."""
        return f"user:{self.user.id}" if self.user else f"addr:{self.address}"

    @property
    def is_admin(self) -> bool:
        return self.user is not None and self.user.role is Role.ADMIN

    @property
    def role_name(self) -> str | None:
        return self.user.role.value if self.user else None


_BAD_CREDENTIALS = "sign-in failed: the token or session is unknown, expired or revoked"


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _check_origin(request: Request, cors: list[str]) -> None:
    """A state-changing request from a browser must come from our own pages (or a configured origin)."""
    origin = request.headers.get("origin")
    if not origin or origin in cors:
        return
    if origin.split("://", 1)[-1].lower() != request.headers.get("host", "").lower():
        raise Forbidden(f"Origin: {origin} may not send state-changing requests here (PROMPTDEX_API__CORS_ORIGINS)")


async def get_caller(
    request: Request,
    state: State,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    session: Annotated[str | None, Depends(cookie_scheme)],
) -> Caller:
    """Resolve the caller once per request. A bad token is 401; a stale session cookie is just anonymous."""
    address = _address(request)
    authorization = request.headers.get("authorization")
    api = state.settings.api
    if request.method not in SAFE_METHODS:
        _check_origin(request, split_list(api.cors_origins))
    if authorization is not None:
        if bearer is None or not bearer.credentials:
            raise Unauthorized("Authorization: send `Bearer TOKEN` with a token from `promptdex token create`")

        def by_token() -> User | None:
            with state.pool.connection() as conn:
                return accounts.user_for_token(conn, token=bearer.credentials)

        user = await run_in_threadpool(by_token)
        if user is None:
            raise Unauthorized(_BAD_CREDENTIALS)
        return Caller(user, "token", address)
    if session:
        def by_session() -> tuple[User, str] | None:
            with state.pool.connection() as conn:
                return accounts.session_user(conn, session_id=session)

        found = await run_in_threadpool(by_session)
        if found is not None:
            user, csrf = found
            if request.method not in SAFE_METHODS:
                sent = request.headers.get(CSRF_HEADER.lower(), "")
                if not sent or not accounts.same_secret(sent, csrf):
                    raise Forbidden(f"{CSRF_HEADER}: missing or wrong; a signed-in browser sends the value of the "
                                    f"{CSRF_COOKIE} cookie with every state-changing request")
            return Caller(user, "session", address, csrf)
    return Caller(None, "anonymous", address)


async def limited_caller(caller: Annotated[Caller, Depends(get_caller)], state: State,
                         response: Response) -> Caller:
    """The caller, counted against their request rate (429 with Retry-After past it)."""
    allowance = state.limits.request(caller.key)
    response.headers.update(allowance.headers())
    return caller


AnyCaller = Annotated[Caller, Depends(limited_caller)]


def _may_read(caller: Caller, state: State) -> Caller:
    if caller.user is None and state.settings.api.anonymous is AnonymousAccess.NONE:
        raise Unauthorized("sign in: this promptdex instance is private (PROMPTDEX_API__ANONYMOUS=none)")
    return caller


async def reader(caller: AnyCaller, state: State) -> Caller:
    """A caller allowed to read: any signed-in user, and anonymous callers unless the instance is private."""
    return _may_read(caller, state)


async def file_reader(caller: Annotated[Caller, Depends(get_caller)], state: State) -> Caller:
    """Like `reader`, for image and thumbnail files: not counted against the request rate (a page of results
    loads dozens of thumbnails at once, and each is served once, then cached by the browser)."""
    return _may_read(caller, state)


reader.reads = True  # type: ignore[attr-defined]  # read by search_api.openapi
file_reader.reads = True  # type: ignore[attr-defined]
CurrentUser = Annotated[Caller, Depends(reader)]


def require_role(needed: Role) -> Callable[..., object]:
    """A dependency that lets through callers whose role is `needed` or higher (403 names the role needed)."""

    async def check(caller: AnyCaller, state: State) -> Caller:
        if caller.user is None:
            if needed is Role.CREATOR and state.settings.api.anonymous is AnonymousAccess.CREATE:
                return caller
            raise Unauthorized(f"sign in: this needs the {needed.value} role or higher")
        if not caller.user.role.allows(needed):
            raise Forbidden(f"this needs the {needed.value} role or higher (you are {caller.user.role.value})")
        return caller

    check.required_role = needed.value  # type: ignore[attr-defined]  # read by search_api.openapi
    return check


Creator = Annotated[Caller, Depends(require_role(Role.CREATOR))]
Admin = Annotated[Caller, Depends(require_role(Role.ADMIN))]


SAFE_HELP = ("Safe mode: strict (only images scored safe), moderate (flagged ones too, marked `nsfw`; the most "
             "explicit hidden) or off. Default and most permissive level by role; one past it is 403.")


def safe_for(caller: Caller, state: State, requested: SafeLevel | None) -> SafeLevel:
    """The safe-mode level of this caller's search (403 when they asked for more than their role allows)."""
    return resolve_level(requested, caller.role_name, state.settings.safety)


def widest_level(caller: Caller, state: State) -> SafeLevel:
    """The most permissive level this caller may use: what image detail and the file routes go by."""
    return role_levels(caller.role_name, state.settings.safety)[1][-1]


async def safe_level(caller: CurrentUser, state: State,
                     safe: Annotated[SafeLevel | None, Query(description=SAFE_HELP)] = None) -> SafeLevel:
    return safe_for(caller, state, safe)


SafeMode = Annotated[SafeLevel, Depends(safe_level)]


def visible_image(service: SearchService, state: AppState, caller: Caller, image_id: int) -> Image:
    """The image, unless no safe-mode level the caller's role allows would show it (404 then, as for no image):
    image detail, similar and the file routes go by this."""
    image = service.image(image_id)
    if not shown_at(image.safety, widest_level(caller, state), state.settings.safety):
        raise NotFound(f"no image with id {image_id}")
    return image
