"""API settings (TASKYARD_API_*)."""

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from taskyard_common.settings import proxy_list

from .key_defaults import GateDefaults
from .schemas import ApprovalPolicies, NotifySpec


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKYARD_API_")

    # production refuses to start on the laptop defaults (SQLite, no admin key, a weak key).
    environment: Literal["local", "production"] = "local"
    # Ensured to exist as an admin key at start-up (compose/k8s pass it as a secret).
    bootstrap_admin_key: SecretStr | None = None

    host: str = "127.0.0.1"
    port: int = 8740
    max_payload_bytes: int = Field(256 * 1024, gt=0)
    max_batch: int = Field(10_000, gt=0)
    # The longest text of one message in a job's thread (POST /jobs/{id}/messages answers 413
    # above it; a longer `ctx.say` is stored cut to this length).
    message_max_chars: int = Field(4000, gt=0)
    # Pending rows older than this are republished by the outbox reconciler.
    outbox_grace_s: float = Field(5.0, gt=0)
    outbox_interval_s: float = Field(2.0, gt=0)
    # The reconciler (reconcile.py): rows whose JOBS message a crash lost are sent again, rows a
    # crash lost are re-created from their message. A row is only judged once it has not moved for
    # reconcile_min_age_s, and acted on in a later round (docs/operations.md, "Durability").
    reconcile_interval_s: float = Field(30.0, gt=0)
    reconcile_min_age_s: float = Field(30.0, gt=0)
    # Rows checked per round (a page; the next round takes the next one).
    reconcile_batch: int = Field(5000, gt=0)
    # JOBS is read whole for messages without a row at start and then this often.
    reconcile_orphan_scan_s: float = Field(600.0, gt=0)
    # Ended jobs whose open edges nobody settled (a crash mid-cancel) are settled this often.
    gate_sweep_interval_s: float = Field(30.0, gt=0)
    projector_batch: int = Field(1000, gt=0)
    # A batch the projector fetched and did not ack (its api process died) is handed to another
    # api's projector after this long: the jobs in it show their last projected state until then.
    # A batch takes milliseconds to project; this only bounds how stale a killed api leaves them.
    projector_ack_wait_s: float = Field(10.0, gt=0)
    key_cache_s: float = Field(5.0, ge=0)
    # The queues overview's consumer listing is cached this long (positions never are: they read
    # their queue's consumers per request, shared by concurrent requests).
    queue_state_cache_s: float = Field(0.5, ge=0)
    # Which workers are live is listed this often; their slot use comes from a KV watch, current.
    workers_cache_s: float = Field(1.0, ge=0)
    # A worker whose heartbeat expired stays listed as `gone` this long.
    gone_keep_s: float = Field(3600.0, ge=0)
    # A job held longer than max(this, 10 x its type's usual duration) marks its worker `stuck`.
    stuck_min_s: float = Field(300.0, gt=0)
    checkpoint_expiry_interval_s: float = Field(2.0, gt=0)
    # A REST worker's result (POST /leases/{id}/complete) may be this large, as an executor's.
    lease_max_result_bytes: int = Field(256 * 1024, gt=0)
    # Finished jobs (rows, timelines, checkpoints) are deleted this long after they ended; 0 keeps
    # them forever. Checked every prune_interval_s by every replica (the deletes are idempotent).
    finished_jobs_max_age_s: float = Field(30 * 86400.0, ge=0)
    prune_interval_s: float = Field(600.0, gt=0)
    # Jobs a key may submit per second (a batch costs its size), with this much burst; per replica.
    submit_rate_per_s: float = Field(10_000.0, gt=0)
    submit_burst: float = Field(50_000.0, gt=0)
    # Invalid keys from one client address (or for one key id) before further invalid keys from it
    # get 429 for the rest of the window; a valid key is never refused by this.
    auth_failures_limit: int = Field(20, ge=1)
    auth_failures_window_s: float = Field(60.0, gt=0)
    # Peers (IPs or CIDRs, comma-separated) whose X-Forwarded-For names the client: the UI, an
    # ingress, a reverse proxy. Empty: the header is ignored from everyone, and the TCP peer is the
    # client (uvicorn's own default trusts it from 127.0.0.1, i.e. from any local process).
    forwarded_allow_ips: str = ""
    # Audit events (admin actions, refused attempts) are deleted this long after; 0 keeps them.
    audit_max_age_s: float = Field(365 * 86400.0, ge=0)
    # Each attempt's usage and costs (docs/costs.md) are deleted this long after it ended (they
    # outlive the job's own row: totals reach back 400 days at most); 0 keeps them.
    cost_max_age_s: float = Field(400 * 86400.0, ge=0)
    # Signs job webhooks (HMAC-SHA256, header Taskyard-Signature); without it `notify` is refused.
    webhook_secret: SecretStr | None = None
    # A webhook for every job of a queue that names none: JSON {"queue": {"url": ..., "on": [...]}}.
    notify_queue_defaults: dict[str, NotifySpec] = {}
    # Concurrency and rate keys for jobs that name none, per job type and per queue, as JSON
    # (docs/operations.md, "Concurrency and rate key defaults"): {"types": {...}, "queues": {...}}.
    gate_defaults: GateDefaults = GateDefaults()
    notify_interval_s: float = Field(1.0, gt=0)
    notify_timeout_s: float = Field(10.0, gt=0)
    # Retries wait 1, 2, 4, … s up to this; after notify_max_tries a delivery is `failed`.
    notify_backoff_max_s: float = Field(300.0, gt=0)
    notify_max_tries: int = Field(20, ge=1)
    # Approval before start for every job of a type or queue, whether it asked or not: JSON
    # {"types": {"deploy": {"mode": "APPROVAL_REQUIRED", "approvers": ["admin"], "expires_s": 3600}},
    #  "queues": {...}} (docs/operations.md, "Approval policies").
    approval_policies: ApprovalPolicies = ApprovalPolicies()
    # Schedules: a fire time late by more than this (or by more than half its period) was missed
    # and follows the schedule's catch-up policy; the timer looks at the schedules at least every
    # schedule_poll_s (it sleeps until the next fire time, and other api processes' changes are
    # seen by then).
    schedule_misfire_grace_s: float = Field(1.0, gt=0)
    schedule_poll_s: float = Field(5.0, gt=0)
    # Fault injection for the outbox test: exit right after the pending row is committed.
    fault_crash_after_insert: bool = False
    # Fault injection for the two-api test: once this many seconds have passed since the projector
    # started, exit in the middle of a batch's transaction (its rows written, not committed).
    fault_crash_mid_projection_after_s: float | None = Field(None, gt=0)

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, value: str) -> str:
        proxy_list(value)
        return value

    @field_validator("notify_queue_defaults")
    @classmethod
    def _defaults_need_a_secret(cls, value: dict, info) -> dict:  # noqa: ANN001
        if value and not info.data.get("webhook_secret"):
            raise ValueError("notify_queue_defaults: set TASKYARD_API_WEBHOOK_SECRET to sign the webhooks")
        return value

    @property
    def trusted_proxies(self) -> list[str]:
        return proxy_list(self.forwarded_allow_ips)

    def production_problems(self, db_url: str) -> list[str]:
        """Why this configuration must not run in production (empty when it may)."""
        problems = []
        if db_url.startswith("sqlite"):
            problems.append("TASKYARD_DB_URL is SQLite: use PostgreSQL in production")
        key = self.bootstrap_admin_key.get_secret_value() if self.bootstrap_admin_key else ""
        if len(key) < 32 or key.lower() in {"changeme", "change-me", "admin"} or len(set(key)) < 8:
            problems.append(
                "TASKYARD_API_BOOTSTRAP_ADMIN_KEY must be set to a random secret of 32+ characters"
            )
        if self.fault_crash_after_insert:
            problems.append("TASKYARD_API_FAULT_CRASH_AFTER_INSERT is a test switch")
        return problems
