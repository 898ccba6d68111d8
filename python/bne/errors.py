"""Every exception bne raises on purpose, in one place. Each is a subclass of the built-in error
a caller would already catch (ValueError for bad content, BlockingIOError for a busy file), and
each message names the file or argument that is wrong."""

from __future__ import annotations


class IndexFormatError(ValueError):
    """An index file is damaged, truncated, foreign, or of an unknown version (names the file)."""


class IndexLockedError(BlockingIOError):
    """Another writer holds the index file (one writer at a time)."""


class DocStoreError(ValueError):
    """The document store cannot be used: not a database, damaged, unwritable, or holding SQL
    objects bne did not write. The message names the file."""


class DocStoreDamagedError(DocStoreError):
    """The document store's file is damaged (SQLite's check fails, or it is no longer a database):
    the CLI exits 1, as for a damaged index."""


class CorpusError(ValueError):
    """The input cannot be read as a corpus (missing, unknown format, malformed, empty)."""


class ShardUnavailableError(RuntimeError):
    """A shard could not answer after its retries (the message names it)."""


class CollectionError(ValueError):
    """A collection cannot be created, opened or used as asked (names the path)."""


class DocStoreMismatchError(CollectionError):
    """The docstore beside an index is not that index's: their tags differ, or live codes have no
    text. The collection is inconsistent (the CLI exits 1, as for a damaged index); names both files."""


class CheckpointError(ValueError):
    """A ``--resume`` file is not a bne training checkpoint (the message names it and what is wrong)."""


class ModelError(ValueError):
    """A model cannot be used: not a model, unreadable, or of the wrong bit count (names it)."""


class ModelNotFoundError(ModelError):
    """The model an index records is nowhere bne looks (names it, its short hash, and the fix)."""


class ResultTooLargeError(ValueError):
    """A search would return more than the result-size limit (``nq x k``, ``nq x rescore``, or a
    range search's hit count); the message names the limit and how to raise it."""


class UserError(Exception):
    """A command-line mistake the user can fix (the CLI prints it as one line and exits 2)."""


def last_line(e: BaseException, limit: int = 300) -> str:
    """The last non-empty line of ``e``'s message (where ONNX Runtime, OpenVINO and torch put the
    cause), at most ``limit`` characters; the exception's type name when the message is empty. For
    one-line errors that wrap another library's exception."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1][:limit] if lines else type(e).__name__
