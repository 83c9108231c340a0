"""Configuration: every setting flowd reads from its environment, validated once at start."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from flowd.catalog import is_system_schema
from flowd.durations import parse_duration
from flowd.errors import ConfigurationError, first_problem

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
# Prefixes that belong to flowd but are not settings: template secrets, and the test suite's own.
_FREE_PREFIXES = ("FLOWD_SECRET_", "FLOWD_TEST_")
SUPABASE_TRANSACTION_POOLER_PORT = 6543
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[0-9A-Za-z.-]*):\d{1,5}")


def _env(name: str, default: Any, description: str, **constraints: Any) -> Any:
    return Field(default, validation_alias=name, description=description, **constraints)


class Settings(BaseSettings):
    """flowd's settings, each read from the environment variable that is its alias."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True)

    database_url: SecretStr | None = _env("DATABASE_URL", None, "Postgres connection string")
    supabase_url: str | None = _env("SUPABASE_URL", None, "Supabase project URL")
    supabase_service_role_key: SecretStr | None = _env(
        "SUPABASE_SERVICE_ROLE_KEY", None, "key for Realtime and Edge Functions; never logged"
    )
    schema_name: str = _env("FLOWD_SCHEMA", "public", "schema of flowd's tables")
    concurrency: int = _env(
        "FLOWD_CONCURRENCY", 16, "executions running actions at once", ge=1, le=1024
    )
    max_attempts: int = _env("FLOWD_MAX_ATTEMPTS", 5, "tries per HTTP action", ge=1, le=100)
    action_timeout_s: float = _env("FLOWD_ACTION_TIMEOUT_S", 10.0, "timeout of one HTTP try", gt=0)
    retry_backoff_s: float = _env(
        "FLOWD_RETRY_BACKOFF_S", 1.0, "first retry delay, doubled per try", ge=0
    )
    retry_max_delay_s: float = _env(
        "FLOWD_RETRY_MAX_DELAY_S", 60.0, "cap on one retry delay and on Retry-After", ge=0
    )
    shutdown_timeout_s: float = _env(
        "FLOWD_SHUTDOWN_TIMEOUT_S", 25.0, "drain time on SIGTERM", ge=0
    )
    abandoned_after_s: float = _env(
        "FLOWD_ABANDONED_AFTER_S",
        900.0,
        "a RUNNING execution this old lost its process; --failed runs it again",
        ge=0,
    )
    max_chain_depth: int = _env(
        "FLOWD_MAX_CHAIN_DEPTH", 3, "flowd-caused changes that may trigger further flows", ge=0
    )
    delivery: Literal["realtime", "durable"] = _env(
        "FLOWD_DELIVERY", "realtime", "realtime (at most once) or durable (database event log)"
    )
    event_retention_s: float = _env(
        "FLOWD_EVENT_RETENTION",
        7 * 86400.0,
        "durable: keep handled events this long (7d, 12h, 3600s)",
        ge=0,
    )
    lease_s: float = _env(
        "FLOWD_LEASE_S", 60.0, "durable: a claimed event is this worker's for as long", gt=0
    )
    poll_interval_s: float = _env(
        "FLOWD_POLL_INTERVAL_S", 1.0, "durable: look for new events at least this often", gt=0
    )
    maintenance_interval_s: float = _env(
        "FLOWD_MAINTENANCE_INTERVAL_S", 60.0, "durable: log the backlog, delete old events", gt=0
    )
    schedule_max_rows: int = _env(
        "FLOWD_SCHEDULE_MAX_ROWS",
        10_000,
        "a scheduled flow's tick runs for at most this many rows, then stops",
        ge=1,
    )
    queue_size: int = _env(
        "FLOWD_QUEUE_SIZE", 1000, "events held in memory before backpressure", ge=1
    )
    reload_interval_s: float = _env(
        "FLOWD_RELOAD_INTERVAL_S", 30.0, "re-read flows at least this often", gt=0
    )
    realtime_heartbeat_s: float = _env(
        "FLOWD_REALTIME_HEARTBEAT_S", 25.0, "heartbeat whose replies are checked", gt=0
    )
    realtime_stall_s: float = _env(
        "FLOWD_REALTIME_STALL_S", 60.0, "silence after which the connection is rebuilt", gt=0
    )
    realtime_ready_timeout_s: float = _env(
        "FLOWD_REALTIME_READY_TIMEOUT_S", 20.0, "wait for 'Subscribed to PostgreSQL'", gt=0
    )
    realtime_backoff_s: float = _env(
        "FLOWD_REALTIME_BACKOFF_S", 1.0, "first reconnect delay, doubled per failure", gt=0
    )
    realtime_max_backoff_s: float = _env(
        "FLOWD_REALTIME_MAX_BACKOFF_S", 30.0, "cap on the reconnect delay", gt=0
    )
    db_statement_cache_size: int | None = _env(
        "FLOWD_DB_STATEMENT_CACHE_SIZE",
        None,
        "asyncpg statement cache; default 0 on port 6543 (transaction pooler), else 100",
        ge=0,
    )
    db_update_schemas: str | None = _env(
        "FLOWD_DB_UPDATE_SCHEMAS",
        None,
        "schemas a DB_UPDATE may write, comma-separated; default public and the trigger tables'",
    )
    log_format: Literal["json", "console"] | None = _env(
        "FLOWD_LOG_FORMAT", None, "json off a terminal, console on one"
    )
    log_level: Literal["debug", "info", "warning", "error"] = _env(
        "FLOWD_LOG_LEVEL", "info", "debug, info, warning or error"
    )

    # Templates under a budget (flowd.act.sandbox).
    template_timeout_s: float = _env(
        "FLOWD_TEMPLATE_TIMEOUT_S", 1.0, "time one non-plain template render may take", gt=0
    )
    template_memory_mb: int = _env(
        "FLOWD_TEMPLATE_MEMORY_MB", 256, "memory one template render may take", ge=16
    )
    template_workers: int = _env(
        "FLOWD_TEMPLATE_WORKERS", 2, "worker processes rendering non-plain templates", ge=1, le=64
    )

    # Operations: the health/metrics endpoint (flowd.ops.health).
    http_addr: str = _env(
        "FLOWD_HTTP_ADDR",
        "127.0.0.1:9464",
        "host:port of /livez, /readyz and /metrics; off to disable",
    )

    # HTTP actions: where they may connect (flowd.act.addresses).
    http_allow_private: str = _env(
        "FLOWD_HTTP_ALLOW_PRIVATE",
        "",
        "link-local/metadata networks or names HTTP actions may call (comma-separated), or all",
    )

    @field_validator("http_allow_private")
    @classmethod
    def _networks_or_names(cls, value: str) -> str:
        for item in _items(value):
            if not (_is_network(item) or _HOST_NAME.fullmatch(item)):
                raise ValueError(
                    f"{item!r} is not a network, an address or a host name"
                    " (169.254.170.2, 169.254.0.0/16, metadata.google.internal, all)"
                )
        return value

    @property
    def http_allowed(self) -> tuple[str, ...]:
        return _items(self.http_allow_private)

    @field_validator("http_addr")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value != "off" and not _HOST_PORT.fullmatch(value):
            raise ValueError("must be host:port (127.0.0.1:9464, [::]:9464) or off")
        return value

    @property
    def http_address(self) -> tuple[str, int] | None:
        if self.http_addr == "off":
            return None
        host, _, port = self.http_addr.rpartition(":")
        return host.strip("[]"), int(port)

    @field_validator("schema_name")
    @classmethod
    def _plain_identifier(cls, value: str) -> str:
        if not _IDENTIFIER.fullmatch(value):
            raise ValueError("must be a plain identifier such as public or flowd")
        return value

    @field_validator("db_update_schemas")
    @classmethod
    def _writable_schemas(cls, value: str | None) -> str | None:
        names = [name.strip() for name in (value or "").split(",") if name.strip()]
        for name in names:
            if is_system_schema(name):
                raise ValueError(f"{name} is a system schema, which no DB_UPDATE may write")
        return ",".join(names) or None

    @property
    def db_update_schema_set(self) -> frozenset[str] | None:
        """FLOWD_DB_UPDATE_SCHEMAS as a set; None when unset (the default applies)."""
        return frozenset(self.db_update_schemas.split(",")) if self.db_update_schemas else None

    @field_validator("log_level", "delivery", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("event_retention_s", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _connection_string(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and (problem := connection_string_problem(value.get_secret_value())):
            raise ValueError(f"not a valid connection string: {problem}")
        return value

    @field_validator("supabase_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc:
            raise ValueError("must be the project URL, such as https://<ref>.supabase.co")
        return value.rstrip("/")

    def require_database_url(self) -> str:
        if self.database_url is None or not self.database_url.get_secret_value():
            raise ConfigurationError(
                "DATABASE_URL is not set: set it to your Postgres connection string "
                "(postgresql://user:password@host:5432/postgres)"
            )
        return self.database_url.get_secret_value()

    def require_supabase(self) -> tuple[str, str]:
        if not self.supabase_url or self.supabase_service_role_key is None:
            raise ConfigurationError(
                "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY must be set "
                "(Project Settings → API in the Supabase dashboard)"
            )
        return self.supabase_url, self.supabase_service_role_key.get_secret_value()

    @property
    def through_transaction_pooler(self) -> bool:
        """DATABASE_URL names Supabase's transaction-mode pooler (port 6543)."""
        return is_transaction_pooler(
            self.database_url.get_secret_value() if self.database_url else ""
        )

    @property
    def statement_cache_size(self) -> int:
        """0 behind the transaction-mode pooler, which cannot keep prepared statements."""
        if self.db_statement_cache_size is not None:
            return self.db_statement_cache_size
        return 0 if self.through_transaction_pooler else 100


def is_transaction_pooler(url: str) -> bool:
    """`url` names Supabase's transaction-mode pooler (port 6543), where LISTEN hears nothing."""
    try:
        port = urlsplit(url).port
    except ValueError:
        port = None
    return port == SUPABASE_TRANSACTION_POOLER_PORT


_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?")


_PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits only: int() reads others too
_BAD_HOST = "a host is not a host name, nor an IPv6 address in brackets ([::1]:5432)"


def connection_string_problem(url: str) -> str | None:
    """What is wrong with a postgresql:// URL (never quoting its password), or None.

    Only its form is checked (scheme, hosts, ports), what would otherwise fail deep in
    the driver or in urllib; a comma-separated list of hosts is allowed, as asyncpg does.
    """
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:  # a [ with no ], or the reverse; urllib's message may quote the URL
        return _BAD_HOST
    if parts.scheme not in ("postgresql", "postgres"):
        return "it must start with postgresql:// (postgresql://user:password@host:5432/db)"
    for host in parts.netloc.rpartition("@")[2].split(","):
        # Neither is quoted: with a stray / in the password, the "host" is user:password.
        name, port = _split_port(host)
        if name is None:
            return _BAD_HOST
        if port and not (_PORT.fullmatch(port) and 0 < int(port) <= 65535):
            return "a port is not a number from 1 to 65535"
    return None


def _split_port(host: str) -> tuple[str | None, str | None]:
    """(name, port text or None) of `host[:port]` / `[address][:port]`; name None if garbled."""
    if host.startswith("["):
        address, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None, None
        return address, rest[1:] if rest else None
    if "[" in host or "]" in host:
        return None, None
    name, colon, port = host.partition(":")
    return name, port if colon else None


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in text.split(",") if item.strip())


def _is_network(item: str) -> bool:
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        return False
    return True


def env_names() -> dict[str, str]:
    """Each setting's environment variable and its description, for `--help`."""
    return {
        str(field.validation_alias): field.description or ""
        for field in Settings.model_fields.values()
    }


def load_settings() -> Settings:
    """Read and check the settings; a typo'd or invalid variable is a ConfigurationError."""
    known = env_names()
    for key in os.environ:
        if key.startswith("FLOWD_") and key not in known and not key.startswith(_FREE_PREFIXES):
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigurationError(f"unknown setting {key}{hint}")
    try:
        # systemd's LoadCredential=: a file per secret setting (DATABASE_URL, ...);
        # the environment wins over a file.
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        return Settings(
            _secrets_dir=credentials if credentials and os.path.isdir(credentials) else None
        )
    except ValidationError as exc:
        where, problem = first_problem(exc, "settings")
        raise ConfigurationError(f"{where}: {problem}") from None
