"""Safe mode: what a level shows, the level each caller gets, and the NSFW score record of an image (no model code).

An image's score is the highest score any configured classifier gave it, its prompt's included; it is complete
once every configured classifier has scored it (`key` set). The levels:
- strict: only complete scores below STRICT_THRESHOLD (an image not scored by every classifier yet is hidden);
- moderate: everything below MODERATE_THRESHOLD (the page blurs the flagged ones and the ones not scored yet);
- off: everything.
"""

from __future__ import annotations

from promptdex.errors import Forbidden
from promptdex.records import ImageFilter, SafetyScore
from promptdex.settings import SafeLevel, SafetySettings

NONE_KEY = "none"  # the key of an empty classifier set: every image counts as scored, at 0


def level_bounds(level: SafeLevel, settings: SafetySettings) -> tuple[float | None, bool]:
    """(hide scores at or above this, hide images not fully scored) for a level; (None, False) shows everything."""
    if level is SafeLevel.STRICT:
        return settings.strict_threshold, True
    if level is SafeLevel.MODERATE:
        return settings.moderate_threshold, False
    return None, False


def restrict(filters: ImageFilter, level: SafeLevel, settings: SafetySettings) -> ImageFilter:
    """The filters with the level's bounds added (they apply in SQL, before any limit)."""
    below, complete = level_bounds(level, settings)
    return filters.model_copy(update={"nsfw_below": below, "nsfw_complete": complete or None})


def flagged(safety: SafetyScore | None, settings: SafetySettings) -> bool:
    """Whether the page blurs this image in moderate mode and Lexica's `nsfw` is true: a score at or above the
    strict threshold, or not fully scored yet."""
    if safety is None or safety.pending:
        return True
    return float(safety.score or 0.0) >= settings.strict_threshold


def shown_at(safety: SafetyScore | None, level: SafeLevel, settings: SafetySettings) -> bool:
    """Whether a search at `level` may show this image (the same rule as the SQL filter of `restrict`)."""
    below, complete = level_bounds(level, settings)
    if below is None:
        return True
    if safety is None or safety.score is None:
        return not complete
    if complete and safety.pending:
        return False
    return safety.score < below


def role_levels(role: str | None, settings: SafetySettings) -> tuple[SafeLevel, list[SafeLevel]]:
    """The default level of a role (None: anonymous) and the levels it may ask for, strict first."""
    if role == "admin":
        default, most = settings.admin_default, SafeLevel.OFF
    elif role == "creator":
        default, most = settings.creator_default, settings.creator_max
    elif role == "viewer":
        default, most = settings.viewer_default, settings.viewer_max
    else:
        default, most = settings.anonymous_default, settings.anonymous_max
    allowed = [level for level in SafeLevel if level.rank <= most.rank]
    if default.rank > most.rank:  # a default past the maximum is clamped to it
        default = most
    return default, allowed


def resolve_level(requested: SafeLevel | None, role: str | None, settings: SafetySettings) -> SafeLevel:
    """The level of one search: the one asked for if the role allows it, else the role's default (403 past it)."""
    default, allowed = role_levels(role, settings)
    if requested is None:
        return default
    if requested not in allowed:
        who = "callers without an account" if role is None else f"{role}s"
        setting = "ANONYMOUS_MAX" if role is None else f"{role.upper()}_MAX"
        raise Forbidden(f"safe: {requested.value} is not allowed for {who}; use "
                        f"{' or '.join(level.value for level in allowed)} (an admin can allow more with "
                        f"PROMPTDEX_SAFETY__{setting})")
    return requested
