"""Domain errors shared by every promptdex component; the CLI and the API map them to exits and codes."""


class PromptdexError(Exception):
    """Base class: a message a user can act on, printed as one line."""


class ConfigError(PromptdexError):
    """A setting or path is wrong (names the setting and what is accepted)."""


class DatabaseError(PromptdexError):
    """The database cannot be reached, started, or used."""


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer promptdex than this one."""


class NotFound(PromptdexError):
    """A requested record does not exist."""


class InvalidInput(PromptdexError):
    """An argument or a file is not acceptable (the message says what is)."""


class Conflict(PromptdexError):
    """The request does not fit the record's state (e.g. cancelling a job that has ended)."""


class IndexMismatch(PromptdexError):
    """An index bundle was built by another model than the one loaded."""


class IndexMissing(PromptdexError):
    """An index bundle has not been built yet."""


class Unauthorized(PromptdexError):
    """No valid credentials: unknown user or token, expired or revoked token, wrong password (never says which)."""


class Forbidden(PromptdexError):
    """Valid credentials, but a role too low for the request (the message names the role needed)."""


class QuotaExceeded(PromptdexError):
    """Over a rate limit or a generation quota; `retry_after` is the seconds until it resets."""

    def __init__(self, message: str, *, retry_after: int, limit: int | None = None, remaining: int = 0) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.limit = limit
        self.remaining = remaining


class PayloadTooLarge(PromptdexError):
    """A body or upload over the configured size or pixel limit."""


class UnsupportedMedia(PromptdexError):
    """An upload that is not an image we can read, or a body of a type the route does not take."""


class IndexCorrupt(IndexMissing):
    """An index bundle is there but cannot be used: a file is damaged, truncated or unreadable. The message names
    the file and the command that repairs it; as an unusable index it answers like IndexMissing (503)."""


class InvalidFields(InvalidInput):
    """One or more fields of a request are not acceptable: `fields` holds (field, message) per problem.

    The field is named as the caller sent it (`steps`); the CLI turns it into its flag (`--steps`), the API into
    `errors[].loc`. `where` prefixes the text (e.g. "prompts.jsonl:3: ").
    """

    def __init__(self, fields: list[tuple[str, str]], *, where: str = "") -> None:
        self.fields = fields
        self.where = where
        super().__init__(where + "; ".join(f"{name}: {message}" for name, message in fields))
