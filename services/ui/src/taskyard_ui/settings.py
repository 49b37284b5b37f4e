"""Settings of the web UI (TASKYARD_UI_*)."""

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskyard_common.settings import proxy_list


class UiSettings(BaseSettings):
    """Where the UI listens, where the API is, and how the key cookie is set."""

    model_config = SettingsConfigDict(env_prefix="TASKYARD_UI_")

    host: str = "127.0.0.1"
    port: int = Field(8741, ge=1, le=65535)
    api_url: str = "http://127.0.0.1:8740"
    # Set true behind HTTPS: the cookie holds an API key and must then never travel in clear text.
    cookie_secure: bool = False
    # Per API call; log streams are exempt from the read timeout (a quiet job sends nothing for a while).
    api_timeout_s: float = Field(10.0, gt=0)
    log_level: str = "info"
    # How often live views (job page, workers, dashboard) ask the API for fresh data, per open page.
    live_interval_s: float = Field(2.0, gt=0, le=60)
    # How long one live connection lasts before the browser reconnects (bounds stale connections).
    live_max_s: float = Field(300.0, gt=0)
    # Peers (IPs or CIDRs, comma-separated) whose X-Forwarded-For names the browser: an ingress or
    # reverse proxy in front of the UI. Empty: the TCP peer is the browser. The UI passes the
    # browser's address on to the API (X-Forwarded-For), which counts failed keys per address
    # when it trusts the UI (TASKYARD_API_FORWARDED_ALLOW_IPS).
    forwarded_allow_ips: str = ""

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        proxy_list(value)
        return value

    @property
    def trusted_proxies(self) -> list[str]:
        return proxy_list(self.forwarded_allow_ips)
