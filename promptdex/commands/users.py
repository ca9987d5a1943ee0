"""`promptdex user ...` and `promptdex token ...`: accounts with a role, and API tokens for scripts."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from promptdex import accounts
from promptdex.console import out
from promptdex.db import open_database
from promptdex.errors import InvalidInput
from promptdex.settings import Settings

T = TypeVar("T")


def register(sub: Any) -> None:
    user = sub.add_parser("user", help="add, list, change and remove users (roles: admin, creator, viewer)")
    actions = user.add_subparsers(dest="user_action", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="add a user (asks for the password unless --password-stdin)")
    add.add_argument("name")
    add.add_argument("--role", required=True, help="admin, creator or viewer")
    add.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    add.set_defaults(func=run_add)
    listing = actions.add_parser("list", help="every user with their role")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=run_list)
    role = actions.add_parser("set-role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", help="admin, creator or viewer")
    role.set_defaults(func=run_set_role)
    remove = actions.add_parser("remove", help="remove a user, their tokens and sessions")
    remove.add_argument("name")
    remove.set_defaults(func=run_remove)

    token = sub.add_parser("token", help="create, list and revoke API tokens (sent as Authorization: Bearer ...)")
    t_actions = token.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    create = t_actions.add_parser("create", help="a new token for a user, printed once on the last line")
    create.add_argument("name", help="the user the token acts as (it carries their role)")
    create.add_argument("--expires", type=float, default=None, metavar="DAYS", help="days until it expires")
    create.add_argument("--label", default="", help="what the token is for")
    create.set_defaults(func=run_token_create)
    t_list = t_actions.add_parser("list", help="every token (never the token itself)")
    t_list.add_argument("--json", action="store_true", help="print JSON")
    t_list.set_defaults(func=run_token_list)
    revoke = t_actions.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("id", type=int)
    revoke.set_defaults(func=run_token_revoke)


def _call(settings: Settings, fn: Callable[..., T], **kwargs: Any) -> T:
    """Run one accounts function on the database (opened for this command, closed after)."""
    db = open_database(settings)
    try:
        with db.connect(autocommit=True) as conn:
            return fn(conn, **kwargs)
    finally:
        db.close()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise InvalidInput("password: no terminal to ask on; pipe it in with --password-stdin")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise InvalidInput("password: the two entries differ")
    return first


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else "-"


def run_add(args: argparse.Namespace, settings: Settings) -> int:
    role = accounts.parse_role(args.role)
    password = _read_password(args.password_stdin)
    user = _call(settings, accounts.add_user, name=args.name, role=role, password=password)
    out(f"added {user.name} ({user.role.value})")
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    users = [u for u in _call(settings, accounts.list_users) if not u.builtin]
    if args.json:
        out(json.dumps([{"name": u.name, "role": u.role.value, "created_at": u.created_at.isoformat()}
                        for u in users], indent=2))
        return 0
    for u in users:
        out(f"{u.name:<24} {u.role.value:<8} since {_when(u.created_at)}")
    if not users:
        out("no users yet: promptdex user add NAME --role admin")
    return 0


def run_set_role(args: argparse.Namespace, settings: Settings) -> int:
    role = accounts.parse_role(args.role)
    user = _call(settings, accounts.set_role, name=args.name, role=role)
    out(f"{user.name} is now {user.role.value}")
    return 0


def run_remove(args: argparse.Namespace, settings: Settings) -> int:
    _call(settings, accounts.remove_user, name=args.name)
    out(f"removed {args.name}")
    return 0


def run_token_create(args: argparse.Namespace, settings: Settings) -> int:
    token_id, token = _call(settings, accounts.create_token, name=args.name, expires_days=args.expires,
                            label=args.label)
    expiry = f", expires in {args.expires:g} days" if args.expires else ""
    out(f"token {token_id} for {args.name}{expiry}; it is shown once, keep it now:")
    out(token)
    return 0


def run_token_list(args: argparse.Namespace, settings: Settings) -> int:
    tokens = _call(settings, accounts.list_tokens)
    if args.json:
        out(json.dumps([{"id": t.id, "user": t.user, "role": t.role.value, "label": t.label,
                         "created_at": t.created_at.isoformat(),
                         "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                         "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                         "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None}
                        for t in tokens], indent=2))
        return 0
    for t in tokens:
        state = "revoked" if t.revoked_at else "active"
        out(f"{t.id:>5}  {t.user:<20} {t.role.value:<8} {state:<8} expires {_when(t.expires_at):<16} "
            f"last used {_when(t.last_used_at):<16} {t.label}")
    if not tokens:
        out("no tokens yet: promptdex token create NAME")
    return 0


def run_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    _call(settings, accounts.revoke_token, token_id=args.id)
    out(f"revoked token {args.id}")
    return 0
