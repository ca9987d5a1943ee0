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


class IndexMismatch(PromptdexError):
    """An index bundle was built by another model than the one loaded."""


class IndexMissing(PromptdexError):
    """An index bundle has not been built yet."""
