"""Service settings, read from the environment (``GNAQ_*``, plus the conventional ``REDIS_URL``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contracts.interaction_log import sqlite_path


class Settings(BaseSettings):
    """Everything an operator can set; every field is also an environment variable (``GNAQ_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="GNAQ_", extra="ignore", populate_by_name=True)

    model_dir: Path = Field(Path("models"), description="model directory whose CURRENT names the served version")
    redis_url: str | None = Field(
        None, validation_alias=AliasChoices("REDIS_URL", "GNAQ_REDIS_URL", "redis_url"),
        description="Redis for the cache, user state and interaction log; unset: embedded in-process store")
    state_dir: Path | None = Field(
        None, description="embedded store only: where the durable interaction log lives (default: model_dir)")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="comma-separated keys accepted in X-API-Key for writes and admin calls")
    open_reads: bool = Field(True, description="GET endpoints without an API key (false: reads need a key too)")
    index: Literal["float", "codes"] = Field(
        "float", description="float: FAISS IndexIDMap2(IndexFlatIP) over dequantized item vectors; "
                             "codes: lookup-table scoring straight from the packed item codes")
    max_k: int = Field(100, ge=1, le=10_000, description="largest k a request may ask for")
    max_batch: int = Field(1000, ge=1, description="most interactions in one POST /interactions")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest POST /interactions body; a larger one is "
                                "refused with 413 by its Content-Length, or once that many bytes arrived")
    max_header_bytes: int = Field(16_384, ge=1024, description="largest request line plus headers (gnaq serve's "
                                  "h11 server: beyond it, uvicorn answers 400 text/plain before the app runs)")
    idempotency_ttl_seconds: float = Field(86_400, ge=1, description="how long a post's Idempotency-Key is "
                                           "remembered: a retry with the same key and body is recorded once")
    cache_ttl_seconds: float = Field(300.0, ge=0, description="lifetime of a cached result (0 disables the cache)")
    cache_ttl_jitter: float = Field(0.1, ge=0, le=1, description="TTLs are spread by up to this fraction")
    near_cache_entries: int = Field(100_000, ge=0, description="users whose cached bodies each replica also keeps "
                                    "in memory (Redis store only; 0: every hit goes to Redis)")
    user_state_ttl_seconds: int = Field(7 * 86400, ge=1, description="lifetime of requantized user codes")
    reload_poll_seconds: float = Field(5.0, ge=0, description="how often CURRENT is checked (0: never poll)")
    redis_timeout_seconds: float = Field(0.25, gt=0, description="per-command Redis timeout of reads")
    redis_write_timeout_seconds: float = Field(5.0, gt=0, description="Redis timeout of recording interactions")
    redis_connections: int = Field(
        64, ge=2, description="Redis connections per client pool of each server process; a command that finds "
                              "all busy waits up to its timeout for one, and cache writes beyond half of them "
                              "are skipped (the next read recomputes)")
    redis_retry_seconds: float = Field(
        0.2, ge=0, description="after a Redis failure, how often it is probed; until it answers, reads serve "
                               "uncached and writes get 503 at once (0: no breaker, every call waits for Redis)")
    search_threads: int = Field(1, ge=1, description="threads FAISS and torch may use per search")
    max_added_items: int = Field(
        10_000, ge=0, description="most items the served model does not know that posts may add before the next "
                                  "model (each is folded in and served at once); beyond it a post naming another "
                                  "new item is refused with 409 (0: refuse every unknown item)")
    item_sync_seconds: float = Field(
        30.0, gt=0, description="how often each replica re-reads every added item from the store (the catch-up "
                                "that repairs a missed announcement or a lost save); announcements arrive at once")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @cached_property
    def interaction_log_path(self) -> Path:
        """Embedded store's SQLite file (durable log of accepted interactions and user state)."""
        return sqlite_path(self.state_dir or self.model_dir)

