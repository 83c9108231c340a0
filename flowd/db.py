"""Database connections: an asyncpg pool, with driver errors turned into one-line causes.

Works directly and through Supabase's pooler: in session mode as is, in transaction
mode (port 6543) with the statement cache off (`Settings.statement_cache_size`).
"""

from __future__ import annotations

import os
import secrets
import socket

import asyncpg

from flowd.config import Settings
from flowd.errors import ConfigurationError, DatabaseUnavailable, DatabaseUnreachable, describe

CONNECT_TIMEOUT_S = 10.0
# SQLSTATEs that say the server is not there right now (rather than that a statement is wrong):
# admin / crash shutdown, cannot connect now (starting or stopping), a read-only transaction
# (failover onto a standby), too many connections. Class 08 (connection exceptions, which
# is also how asyncpg surfaces PgBouncer's errors: 08P01) is matched as a class.
_OUTAGE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "25006", "53300"})
# PgBouncer's words, should one arrive under another SQLSTATE.
_POOLER_MESSAGES = (
    "server conn crashed",
    "no more connections allowed",
    "pgbouncer cannot connect to server",
    "query_wait_timeout",
)
# Any failure of a database call, an outage or not (side tasks log these and go on).
DATABASE_ERRORS = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# One connection, whether taken from a pool or opened alone.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


def is_outage(exc: BaseException) -> bool:
    """Does `exc` mean "the database is not there right now" (to be waited out)?

    Network errors and timeouts on connect, connection-class errors, a server shutting
    down, restarting or failed over, a full server or pooler, and asyncpg's state after a
    connection broke mid-operation. Not an outage: anything a statement itself did wrong.
    """
    if isinstance(exc, OSError | asyncpg.InternalClientError | asyncpg.ConnectionDoesNotExistError):
        return True  # OSError covers ConnectionError and TimeoutError
    if isinstance(exc, asyncpg.InterfaceError):
        return "connection is closed" in str(exc) or "connection was closed" in str(exc)
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(exc.sqlstate or "")
        if sqlstate.startswith("08") or sqlstate in _OUTAGE_SQLSTATES:
            return True
        message = str(getattr(exc, "message", "") or exc).lower()
        return any(words in message for words in _POOLER_MESSAGES)
    return False


def worker_id() -> str:
    """This process, as it appears in `flow_events.worker` and `flow_ticks.worker`."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class _PooledConnection(asyncpg.Connection):
    """A pooled connection released without asyncpg's reset query.

    flowd leaves no session state on a pooled connection (its settings, locks and
    search paths are all transaction-local; LISTEN uses a connection of its own), and the
    reset costs one more round trip per query, the largest single cost per event.
    """

    def get_reset_query(self) -> str:
        return ""


async def create_pool(settings: Settings, *, max_size: int | None = None) -> asyncpg.Pool:
    """A connection pool to DATABASE_URL; exit-2 errors when it cannot be had."""
    url = settings.require_database_url()
    size = max_size or min(settings.concurrency + 2, 20)
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=size,
            timeout=CONNECT_TIMEOUT_S,
            statement_cache_size=settings.statement_cache_size,
            connection_class=_PooledConnection,
            # UTC, as on Supabase: rows read back encode timestamps as Realtime sends them.
            server_settings={"application_name": "flowd", "TimeZone": "UTC"},
        )
    except (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidPasswordError) as exc:
        raise DatabaseUnavailable(
            f"the database refused the login ({exc}); check the user and password in DATABASE_URL"
        ) from None
    except asyncpg.InvalidCatalogNameError as exc:
        raise DatabaseUnavailable(f"{exc}; check the database name in DATABASE_URL") from None
    except (OSError, TimeoutError, socket.gaierror) as exc:
        raise DatabaseUnreachable(
            f"cannot reach the database ({describe(exc)}); "
            "check the host and port in DATABASE_URL and that the server is up"
        ) from None
    except (ValueError, asyncpg.ClientConfigurationError) as exc:
        raise ConfigurationError(f"DATABASE_URL is not a valid connection string: {exc}") from None
    except asyncpg.PostgresError as exc:
        raise DatabaseUnreachable(f"the database refused the connection: {exc}") from None
    assert pool is not None
    return pool
