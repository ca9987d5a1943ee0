"""Accounts: users with a role, hashed API tokens, browser sessions and one-time sign-in links (no web code)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from promptdex.errors import DatabaseError, InvalidInput, NotFound

Conn = psycopg.Connection[Any]

LOCAL_ADMIN = "local-admin"  # built in: signs in only through the one-time link `serve` prints on loopback
TOKEN_PREFIX = "pdx_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY_HASH = _hasher.hash("not a password anyone has")


class Role(StrEnum):
    """What a signed-in caller may do; each role can do everything the ones below it can."""

    VIEWER = "viewer"
    CREATOR = "creator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


_RANK = {Role.VIEWER: 1, Role.CREATOR: 2, Role.ADMIN: 3}


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: Role
    builtin: bool
    created_at: datetime


@dataclass(frozen=True)
class Token:
    id: int
    user: str
    role: Role
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InvalidInput(f"role: {value!r} is not a role; use one of admin, creator, viewer") from None


def digest(secret: str) -> str:
    """The stored form of a token, session id or link: high-entropy secrets need no slow hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _user(row: dict[str, Any]) -> User:
    return User(int(row["id"]), row["name"], Role(row["role"]), bool(row["builtin"]), row["created_at"])


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(f"name: {name!r} is not a user name; use 1-64 letters, digits, '.', '_', '@' or '-', "
                           "starting with a letter or digit")
    if name == LOCAL_ADMIN:
        raise InvalidInput(f"name: {LOCAL_ADMIN!r} is reserved for the one-time sign-in link of `serve`")
    return name


def _check_password(password: str) -> str:
    if not password:
        raise InvalidInput("password: it is empty; give a password of at least 8 characters")
    if len(password) < 8:
        raise InvalidInput("password: it is shorter than 8 characters")
    if len(password) > 1024 or "\x00" in password:
        raise InvalidInput("password: at most 1024 characters, with no NUL character")
    return password


# -- users ---------------------------------------------------------------------------------------------


def add_user(conn: Conn, *, name: str, role: Role, password: str) -> User:
    _check_name(name)
    hashed = hash_password(_check_password(password))
    row = conn.execute(
        "INSERT INTO users (name, role, password_hash) VALUES (%s, %s, %s) ON CONFLICT (name) DO NOTHING "
        "RETURNING *", (name, role.value, hashed)).fetchone()
    if row is None:
        raise InvalidInput(f"name: a user named {name!r} already exists")
    return _user(row)


def get_user(conn: Conn, *, name: str) -> User | None:
    row = conn.execute("SELECT * FROM users WHERE name = %s", (name,)).fetchone()
    return None if row is None else _user(row)


def list_users(conn: Conn) -> list[User]:
    return [_user(r) for r in conn.execute("SELECT * FROM users ORDER BY name").fetchall()]


def set_role(conn: Conn, *, name: str, role: Role) -> User:
    row = conn.execute("UPDATE users SET role = %s WHERE name = %s AND NOT builtin RETURNING *",
                       (role.value, name)).fetchone()
    if row is None:
        raise NotFound(f"no user named {name!r}")
    return _user(row)


def remove_user(conn: Conn, *, name: str) -> None:
    """Remove a user with their tokens and sessions; their jobs stay, without an owner."""
    if conn.execute("DELETE FROM users WHERE name = %s AND NOT builtin", (name,)).rowcount != 1:
        raise NotFound(f"no user named {name!r}")


def has_admin(conn: Conn) -> bool:
    row = conn.execute("SELECT 1 FROM users WHERE role = 'admin' AND NOT builtin LIMIT 1").fetchone()
    return row is not None


def verify_password(conn: Conn, *, name: str, password: str) -> User | None:
    """The user when name and password match; None otherwise, in about the same time either way."""
    row = conn.execute("SELECT * FROM users WHERE name = %s AND NOT builtin", (name,)).fetchone()
    stored = row["password_hash"] if row is not None and row["password_hash"] else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None or not row["password_hash"]:
        return None
    if _hasher.check_needs_rehash(stored):
        conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (hash_password(password), row["id"]))
    return _user(row)


def ensure_local_admin(conn: Conn) -> User:
    """The built-in admin that the one-time sign-in link of `serve` signs in as (it has no password)."""
    conn.execute("INSERT INTO users (name, role, builtin) VALUES (%s, 'admin', true) ON CONFLICT (name) DO NOTHING",
                 (LOCAL_ADMIN,))
    row = conn.execute("SELECT * FROM users WHERE name = %s", (LOCAL_ADMIN,)).fetchone()
    if row is None:
        raise DatabaseError(f"the built-in user {LOCAL_ADMIN!r} could not be created")
    return _user(row)


# -- API tokens ----------------------------------------------------------------------------------------


def create_token(conn: Conn, *, name: str, expires_days: float | None = None, label: str = "") -> tuple[int, str]:
    """A new token for the user (returned once; only its hash is kept). Returns (token id, token)."""
    if expires_days is not None and not 0 < expires_days <= 36500:
        raise InvalidInput("expires: give a number of days between 0 and 36500")
    if len(label) > 200 or "\x00" in label:
        raise InvalidInput("label: at most 200 characters, with no NUL character")
    user = get_user(conn, name=name)
    if user is None or user.builtin:
        raise NotFound(f"no user named {name!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = conn.execute(
        "INSERT INTO api_tokens (user_id, token_hash, label, expires_at) VALUES (%s, %s, %s, "
        " CASE WHEN %s::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => %s::float8 * 86400) END) "
        "RETURNING id", (user.id, digest(token), label, expires_days, expires_days)).fetchone()
    if row is None:
        raise DatabaseError("the token could not be stored")
    return int(row["id"]), token


def list_tokens(conn: Conn) -> list[Token]:
    rows = conn.execute(
        "SELECT t.*, u.name, u.role FROM api_tokens t JOIN users u ON u.id = t.user_id ORDER BY t.id").fetchall()
    return [Token(int(r["id"]), r["name"], Role(r["role"]), r["label"], r["created_at"], r["expires_at"],
                  r["revoked_at"], r["last_used_at"]) for r in rows]


def revoke_token(conn: Conn, *, token_id: int) -> None:
    cur = conn.execute("UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s", (token_id,))
    if cur.rowcount != 1:
        raise NotFound(f"no token with id {token_id}")


def user_for_token(conn: Conn, *, token: str) -> User | None:
    """The token's user when it is known, unexpired and not revoked; None otherwise."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = conn.execute(
        "UPDATE api_tokens t SET last_used_at = now() FROM users u "
        "WHERE t.token_hash = %s AND u.id = t.user_id AND t.revoked_at IS NULL "
        "  AND (t.expires_at IS NULL OR t.expires_at > now()) RETURNING u.*", (digest(token),)).fetchone()
    return None if row is None else _user(row)


# -- browser sessions and one-time links -------------------------------------------------------------


def create_session(conn: Conn, *, user_id: int, days: float) -> tuple[str, str]:
    """A new browser session: (session id for the cookie, CSRF token). Only the id's hash is stored."""
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    conn.execute("INSERT INTO sessions (id_hash, user_id, csrf_token, expires_at) "
                 "VALUES (%s, %s, %s, now() + make_interval(secs => %s))",
                 (digest(session_id), user_id, csrf, days * 86400))
    conn.execute("DELETE FROM sessions WHERE expires_at < now()")
    return session_id, csrf


def session_user(conn: Conn, *, session_id: str) -> tuple[User, str] | None:
    """(user, CSRF token) of a live session; None for an unknown or expired one."""
    if len(session_id) > 200:
        return None
    row = conn.execute("SELECT u.*, s.csrf_token FROM sessions s JOIN users u ON u.id = s.user_id "
                       "WHERE s.id_hash = %s AND s.expires_at > now()", (digest(session_id),)).fetchone()
    return None if row is None else (_user(row), str(row["csrf_token"]))


def end_session(conn: Conn, *, session_id: str) -> None:
    conn.execute("DELETE FROM sessions WHERE id_hash = %s", (digest(session_id),))


def create_login_link(conn: Conn, *, user_id: int, minutes: float) -> str:
    token = secrets.token_urlsafe(32)
    conn.execute("INSERT INTO login_links (token_hash, user_id, expires_at) "
                 "VALUES (%s, %s, now() + make_interval(secs => %s))", (digest(token), user_id, minutes * 60))
    return token


def use_login_link(conn: Conn, *, token: str) -> User | None:
    """The link's user, once: the link is spent by this call; None when unknown, used or expired."""
    if len(token) > 200:
        return None
    row = conn.execute(
        "UPDATE login_links l SET used_at = now() FROM users u WHERE l.token_hash = %s AND u.id = l.user_id "
        "AND l.used_at IS NULL AND l.expires_at > now() RETURNING u.*", (digest(token),)).fetchone()
    return None if row is None else _user(row)


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
