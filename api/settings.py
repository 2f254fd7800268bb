"""Settings, read from the environment with the prefix WANGGE_.

Tests and the CLI build the app from an explicit `Settings` object; nothing is
read at import time.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "change-me"
#: The Open311 write key a development server accepts; production must set its own.
DEFAULT_OPEN311_KEY = "wangge-dev-open311"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WANGGE_", extra="ignore")

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the PostGIS store "
        "(postgresql+psycopg://user:pass@host/db); unset: the embedded SpatiaLite file",
    )
    data_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir("wangge")),
        description="where the embedded SpatiaLite store lives",
    )
    environment: str = Field(default="development", description="development or production")
    secret_key: str = Field(
        default=DEFAULT_SECRET, description="signs tokens; set it in production"
    )
    open311_api_keys: str = Field(
        default=DEFAULT_OPEN311_KEY,
        description="comma-separated api_key values accepted by Open311 POST requests "
        f"(development default {DEFAULT_OPEN311_KEY!r}; set your own in production)",
    )
    token_expiry_s: float = Field(
        default=3600.0, gt=0, description="lifetime of a login token in seconds (default 1 h)"
    )
    auth_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="how long a process trusts a looked-up user or API key before reading it "
        "again (a disabled user's token stops working within this time in other processes)",
    )
    dev_role_headers: bool = Field(
        default=False,
        description="development only: trust X-Wangge-Role / X-Wangge-User headers as the "
        "caller's identity (refused in production)",
    )
    dev_default_role: str = Field(
        default="anonymous",
        description="with dev_role_headers: the role of a request that sends no role header",
    )
    tiles: str = Field(
        default="none",
        description="basemap: none, an XYZ URL template, or gcj02:<URL template>",
    )
    household_band_min: int = Field(default=300, ge=1, description="fewest households per grid")
    household_band_max: int = Field(default=500, ge=1, description="most households per grid")
    page_size_max: int = Field(default=1000, ge=1, description="largest page of features served")
    near_outside_m: float = Field(
        default=50.0,
        ge=0,
        description="a case point outside every grid but this close goes to the nearest grid",
    )
    duplicate_radius_m: float = Field(
        default=100.0, gt=0, description="possible duplicates: open cases this close"
    )
    duplicate_window_days: float = Field(
        default=7.0, gt=0, description="possible duplicates: reported this many days back"
    )
    # Stations: nearest, coverage and siting (issue 5).
    walk_speed_m_per_min: float = Field(
        default=80.0, gt=0, description="walking speed for minutes and life circles (m/min)"
    )
    detour_factor: float = Field(
        default=1.3,
        ge=1,
        description="walk = straight line x this when no street network is stored",
    )
    max_radius_m: float = Field(
        default=5000.0, gt=0, description="largest search radius a station query may ask for"
    )
    nearest_k_max: int = Field(
        default=50, ge=1, description="most stations one nearest query returns"
    )
    siting_candidates_max: int = Field(
        default=5000, ge=1, description="most candidate sites one siting run considers"
    )
    worker_threads: int = Field(
        default=8,
        ge=1,
        le=256,
        description="threads per worker process running blocking work (route handlers, "
        "store calls); more threads than cores only queue on the GIL",
    )
    # Abuse limits, idempotent intake and database faults (issue 7; api/protect.py).
    rate_limit_per_min: float = Field(
        default=30.0,
        ge=0,
        description="public writes (case and Open311 POSTs) per client per minute, per worker "
        "process (N workers allow N x this); 0 switches the limit off",
    )
    rate_limit_burst: int = Field(
        default=20, ge=1, description="public writes a client may send at once before the rate"
    )
    login_rate_per_min: float = Field(
        default=10.0,
        ge=0,
        description="password checks (POST /login, /api/v1/auth/token) per address per minute, "
        "per worker process; 0 switches the limit off",
    )
    login_rate_burst: int = Field(
        default=10, ge=1, description="password checks an address may send at once"
    )
    body_max_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="largest request body outside uploads (bytes)"
    )
    upload_max_bytes: int = Field(
        default=100 * 1024 * 1024,
        ge=1024,
        description="largest request body to /api/v1/imports (bytes), counted while streaming",
    )
    bbox_max_deg: float = Field(
        default=0.5, gt=0, description="widest and tallest bbox a query may ask for (degrees)"
    )
    idempotency_ttl_s: float = Field(
        default=24 * 3600.0, gt=0, description="how long an Idempotency-Key's answer is kept (s)"
    )
    idempotency_lease_s: float = Field(
        default=60.0,
        gt=0,
        description="a request holding an Idempotency-Key this long without finishing is "
        "taken for dead, and a retry may run it again (it cannot commit twice)",
    )
    db_timeout_s: int = Field(
        default=3,
        ge=1,
        description="PostGIS connect timeout and pool wait (s): past it a request answers 503",
    )
    host: str = "127.0.0.1"
    port: int = 8000

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.environment == "production" and self.secret_key == DEFAULT_SECRET:
            raise ValueError("WANGGE_SECRET_KEY must be set when WANGGE_ENVIRONMENT=production")
        if self.environment == "production" and self.dev_role_headers:
            raise ValueError("WANGGE_DEV_ROLE_HEADERS must be off in production")
        open311_keys = [k.strip() for k in self.open311_api_keys.split(",")]
        if self.environment == "production" and DEFAULT_OPEN311_KEY in open311_keys:
            raise ValueError("WANGGE_OPEN311_API_KEYS must be set (not the dev key) in production")
        if self.household_band_min > self.household_band_max:
            raise ValueError("WANGGE_HOUSEHOLD_BAND_MIN is above WANGGE_HOUSEHOLD_BAND_MAX")
        return self

    @property
    def spatialite_path(self) -> Path:
        return self.data_dir / "wangge.sqlite"

    @property
    def store_url(self) -> str:
        """The URL actually used: the configured PostGIS one or the SpatiaLite file."""
        return self.database_url or f"sqlite:///{self.spatialite_path}"
