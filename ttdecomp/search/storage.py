"""The study's storage: an Optuna RDB storage opened, checked and connected with clear errors.

Every process of a search opens the same storage: a SQLite file for one machine (checked to
be a new file or an Optuna study, never another application's database), PostgreSQL for
many. :func:`open_storage` connects with timeouts and heartbeats, retries only the race of
processes creating Optuna's tables together, and turns a missing driver or an unreachable
server into an :class:`~ttdecomp.errors.InvalidInputError`; :func:`redact` keeps a URL's
password out of every message.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

__all__ = ["check_sqlite_file", "open_storage", "redact"]


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages).

    Examples
    --------
    >>> redact("postgresql://me:secret@db:5432/search")
    'postgresql://me:***@db:5432/search'
    """
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> Any:
    """An Optuna ``RDBStorage`` for ``url``, connected (or a clear error within seconds).

    SQLite waits up to a minute for a lock held by another worker; PostgreSQL gives up
    connecting after 5 seconds. Trials send a heartbeat every 10 seconds, so a trial whose
    process died is marked failed (and re-run) after a minute.
    """
    import optuna
    import sqlalchemy.exc

    if not isinstance(url, str) or "://" not in url:
        raise InvalidInputError(
            f"--storage {url!r} is not a database URL; expected e.g. sqlite:///study.db or "
            "postgresql://user:password@host:5432/dbname."
        )
    scheme = url.split("://", 1)[0].split("+")[0]
    if scheme == "sqlite":
        check_sqlite_file(url)
        connect: dict[str, Any] = {"timeout": 60}
    elif scheme == "postgresql":
        connect = {"connect_timeout": 5}
    elif scheme == "mysql":
        connect = {"connect_timeout": 5}
    else:
        raise InvalidInputError(
            f"--storage {redact(url)}: unsupported database {scheme!r}; expected sqlite:/// "
            "(one machine) or postgresql:// (many)."
        )
    import time
    import warnings

    def connect_once() -> Any:
        with warnings.catch_warnings():  # the heartbeat is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": connect, "pool_pre_ping": True},
                heartbeat_interval=10,
                grace_period=60,
            )

    try:
        for attempt in range(5):
            try:
                return connect_once()
            except sqlalchemy.exc.DBAPIError as exc:
                # processes opening an empty database together (workers, or a dashboard
                # watching the file) race to create Optuna's tables; the loser finds them
                # made a moment later. SQLite reports the race as an OperationalError
                # ("table ... already exists", "database is locked"), which otherwise means
                # an unreachable server: only the race is retried.
                if attempt == 4 or not _is_creation_race(exc):
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError as exc:
        cause = exc.__cause__ or exc
        name = getattr(cause, "name", None) or "its driver"
        raise InvalidInputError(
            f"--storage {redact(url)} needs the database driver {name!r}, which is not "
            'installed; install the search extras: pip install "ttdecomp[search]" (PostgreSQL: '
            "psycopg)."
        ) from None
    except (sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        if scheme == "sqlite":
            raise InvalidInputError(
                f"cannot open the SQLite study file of --storage {redact(url)}: "
                f"{reason[0] if reason else exc}. Check that its folder exists and is writable "
                "and that the file is an Optuna study (or does not exist yet)."
            ) from None
        raise InvalidInputError(
            f"cannot reach the study storage {redact(url)}: {reason[0] if reason else exc}. "
            "Check that the database server is running and the URL (host, port, user, "
            "database) is right, or drop --storage to use a SQLite file in --output."
        ) from None


_SQLITE_HEADER = b"SQLite format 3\x00"
#: Tables of an Optuna RDB storage (any one: another process may be creating the rest).
_OPTUNA_TABLES = {"studies", "trials", "version_info", "alembic_version"}


def check_sqlite_file(url: str) -> None:
    """Refuse a SQLite storage Optuna must not write to: a file that is not SQLite, a database
    of another application (tables, none of Optuna's), or a folder that does not exist.

    Optuna creates its tables in any SQLite file it is given; in a database that holds other
    tables it would mix them in. An empty or missing file is a new study.

    Examples
    --------
    >>> import sqlite3, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "app.db")
    >>> with sqlite3.connect(path) as db:
    ...     _ = db.execute("CREATE TABLE users (name TEXT)")
    >>> check_sqlite_file(f"sqlite:///{path}")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ttdecomp.errors.InvalidInputError: --storage ...app.db holds another application's tables (users) ...
    """  # noqa: E501
    import sqlite3

    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception as exc:  # sqlalchemy's ArgumentError: an unparseable URL
        raise InvalidInputError(f"--storage {redact(url)} is not a database URL: {exc}") from None
    if not database or database == ":memory:":
        return
    path = Path(database)
    if not path.parent.is_dir():
        raise InvalidInputError(
            f"--storage {redact(url)}: the folder {path.parent} does not exist; create it or "
            "give a SQLite file in an existing folder."
        )
    if not path.exists():
        return
    if not path.is_file():
        raise InvalidInputError(f"--storage {redact(url)}: {path} is not a file.")
    with open(path, "rb") as f:
        header = f.read(len(_SQLITE_HEADER))
    if not header:
        return
    if header != _SQLITE_HEADER:
        raise InvalidInputError(
            f"--storage {redact(url)}: {path} is not a SQLite database; give a new file name "
            "(Optuna creates it) or an Optuna study file."
        )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {
                row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
    except sqlite3.Error as exc:
        raise InvalidInputError(
            f"--storage {redact(url)}: cannot read the SQLite file {path}: {exc}."
        ) from None
    if tables and not tables & _OPTUNA_TABLES:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise InvalidInputError(
            f"--storage {path} holds another application's tables ({shown}) and no Optuna "
            "study; Optuna would add its own tables to it. Give a new file name, e.g. "
            "sqlite:///study.db, or an Optuna study file."
        )


def _is_creation_race(exc: Any) -> bool:
    """Whether ``exc`` is another process creating the same tables at the same moment."""
    import sqlalchemy.exc

    if isinstance(exc, (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)):
        return True
    text = str(getattr(exc, "orig", None) or exc).lower()
    return isinstance(exc, sqlalchemy.exc.OperationalError) and (
        "already exists" in text or "database is locked" in text
    )
