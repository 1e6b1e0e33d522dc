"""The notifications service's own settings (FUNNELCAST_NOTIFICATIONS_*), with documented defaults."""

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class NotificationsConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FUNNELCAST_NOTIFICATIONS_", extra="ignore")

    # e-mail over SMTP; no host: the e-mail channel is off (e-mails stay queued as pending)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "Funnelcast <notifications@funnelcast.local>"
    smtp_starttls: bool = False
    smtp_max_attempts: int = 5
    # SMTP AUTH when a username is set; the password is a SecretStr: it shows as ********** in any
    # repr or log of the settings, and no answer of the API carries it
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None

    # webhooks: retry schedule, auto-disable, delivery concurrency
    webhook_retry_base_s: float = 5.0
    webhook_retry_cap_s: float = 3600.0
    webhook_max_attempts: int = 8
    webhook_disable_after: int = 5  # dead-lettered deliveries in a row
    webhook_timeout_s: float = 5.0  # a whole attempt: connecting, sending, the answer's status and headers
    webhook_concurrency: int = 64  # attempts in flight per instance
    # per subscription (endpoint), so a slow or busy endpoint cannot take every slot: attempts in
    # flight, and attempts started per second (bursts up to one second's worth); what is over waits
    webhook_concurrency_per_subscription: int = 16
    webhook_rate_per_s: float = 500.0

    # true: webhook and e-mail deliveries are left to `python -m services.notifications.worker` processes,
    # so attempts to slow or many endpoints never share this process's event loop and CPU with the
    # consumer and the sockets; false: this process runs them too (one process, e.g. `funnelcast up`)
    delivery_worker: bool = False

    # timers
    poll_interval_s: float = 1.0
    escalate_after_s: float = 4 * 3600  # after a missed follow-up, before the manager hears of it
    opportunity_idle_days: int = 14

    # the daily digest per rep, at this hour in this time zone
    digest_hour: int = 8
    digest_timezone: str = "Asia/Shanghai"
    digest_high_score: int = 70  # leads scored at least this in the last day count as high-score
