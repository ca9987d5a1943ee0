"""Accounts against a real PostgreSQL: argon2id passwords, hashed tokens, expiry and revocation, sessions, links."""

from __future__ import annotations

from typing import Any

import pytest

from promptdex import accounts
from promptdex.accounts import Role
from promptdex.errors import InvalidInput, NotFound

pytestmark = pytest.mark.integration


def test_passwords_are_argon2id_hashes_and_verify(conn: Any) -> None:
    user = accounts.add_user(conn, name="ada", role=Role.CREATOR, password="correct horse")
    stored = conn.execute("SELECT password_hash FROM users WHERE id = %s", (user.id,)).fetchone()["password_hash"]
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert accounts.verify_password(conn, name="ada", password="correct horse") == user
    assert accounts.verify_password(conn, name="ada", password="wrong horse") is None
    assert accounts.verify_password(conn, name="nobody", password="correct horse") is None


@pytest.mark.parametrize("name, role, password, word", [
    ("bob", "owner", "long enough", "role"),
    ("bob", "viewer", "", "empty"),
    ("bob", "viewer", "short", "8 characters"),
    ("has space", "viewer", "long enough", "name"),
    ("local-admin", "admin", "long enough", "reserved"),
])
def test_bad_users_are_refused(conn: Any, name: str, role: str, password: str, word: str) -> None:
    with pytest.raises(InvalidInput, match=word):
        accounts.add_user(conn, name=name, role=accounts.parse_role(role), password=password)
    assert accounts.list_users(conn) == []


def test_duplicate_user_is_refused(conn: Any) -> None:
    accounts.add_user(conn, name="ada", role=Role.VIEWER, password="long enough")
    with pytest.raises(InvalidInput, match="already exists"):
        accounts.add_user(conn, name="ada", role=Role.ADMIN, password="other password")
    assert [u.role for u in accounts.list_users(conn)] == [Role.VIEWER]


def test_tokens_are_stored_hashed_carry_the_role_and_can_be_revoked(conn: Any) -> None:
    accounts.add_user(conn, name="ada", role=Role.VIEWER, password="long enough")
    token_id, token = accounts.create_token(conn, name="ada", label="ci")
    assert token.startswith("pdx_") and len(token) > 40
    rows = conn.execute("SELECT token_hash FROM api_tokens").fetchall()
    assert [r["token_hash"] for r in rows] == [accounts.digest(token)]
    found = accounts.user_for_token(conn, token=token)
    assert found is not None and found.name == "ada" and found.role is Role.VIEWER
    accounts.set_role(conn, name="ada", role=Role.CREATOR)
    found = accounts.user_for_token(conn, token=token)
    assert found is not None and found.role is Role.CREATOR  # the token carries the user's current role
    assert accounts.list_tokens(conn)[0].last_used_at is not None
    accounts.revoke_token(conn, token_id=token_id)
    assert accounts.user_for_token(conn, token=token) is None
    with pytest.raises(NotFound):
        accounts.revoke_token(conn, token_id=token_id + 100)


def test_expired_and_tampered_tokens_are_refused(conn: Any) -> None:
    accounts.add_user(conn, name="ada", role=Role.ADMIN, password="long enough")
    _, token = accounts.create_token(conn, name="ada", expires_days=1)
    assert accounts.user_for_token(conn, token=token) is not None
    conn.execute("UPDATE api_tokens SET expires_at = now() - interval '1 second'")
    assert accounts.user_for_token(conn, token=token) is None
    _, fresh = accounts.create_token(conn, name="ada")
    for bad in (fresh[:-1], fresh + "x", fresh.upper(), "pdx_", "", "x" * 500):
        assert accounts.user_for_token(conn, token=bad) is None


def test_removing_a_user_removes_their_tokens_and_sessions(conn: Any) -> None:
    user = accounts.add_user(conn, name="ada", role=Role.CREATOR, password="long enough")
    _, token = accounts.create_token(conn, name="ada")
    session_id, _ = accounts.create_session(conn, user_id=user.id, days=1)
    accounts.remove_user(conn, name="ada")
    assert accounts.user_for_token(conn, token=token) is None
    assert accounts.session_user(conn, session_id=session_id) is None
    with pytest.raises(NotFound):
        accounts.remove_user(conn, name="ada")


def test_sessions_carry_a_csrf_token_and_end(conn: Any) -> None:
    user = accounts.add_user(conn, name="ada", role=Role.VIEWER, password="long enough")
    session_id, csrf = accounts.create_session(conn, user_id=user.id, days=1)
    assert conn.execute("SELECT id_hash FROM sessions").fetchone()["id_hash"] == accounts.digest(session_id)
    assert accounts.session_user(conn, session_id=session_id) == (user, csrf)
    accounts.end_session(conn, session_id=session_id)
    assert accounts.session_user(conn, session_id=session_id) is None


def test_login_links_work_once_and_expire(conn: Any) -> None:
    admin = accounts.ensure_local_admin(conn)
    assert admin.role is Role.ADMIN and admin.builtin
    assert accounts.ensure_local_admin(conn) == admin
    assert not accounts.has_admin(conn)  # the built-in admin does not count as an admin of the instance
    link = accounts.create_login_link(conn, user_id=admin.id, minutes=5)
    assert accounts.use_login_link(conn, token=link) == admin
    assert accounts.use_login_link(conn, token=link) is None
    old = accounts.create_login_link(conn, user_id=admin.id, minutes=5)
    conn.execute("UPDATE login_links SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
    assert accounts.use_login_link(conn, token=old) is None
    with pytest.raises(NotFound):
        accounts.create_token(conn, name=accounts.LOCAL_ADMIN)
    assert accounts.verify_password(conn, name=accounts.LOCAL_ADMIN, password="") is None
