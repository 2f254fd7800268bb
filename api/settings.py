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
    tiles: str = Field(
        default="none",
        description="basemap: none, an XYZ URL template, or gcj02:<URL template>",
    )
    household_band_min: int = Field(default=300, ge=1, description="fewest households per grid")
    household_band_max: int = Field(default=500, ge=1, description="most households per grid")
    page_size_max: int = Field(default=1000, ge=1, description="largest page of features served")
    host: str = "127.0.0.1"
    port: int = 8000

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.environment == "production" and self.secret_key == DEFAULT_SECRET:
            raise ValueError("WANGGE_SECRET_KEY must be set when WANGGE_ENVIRONMENT=production")
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
