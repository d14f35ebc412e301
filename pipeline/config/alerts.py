"""The ``alerts`` section: what the sink records (rules, logs, thumbnails), where it sends signed webhooks, and the
MQTT broker it publishes events to."""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from pipeline.alerts import AlertRulesConfig, MqttConfig, RetryPolicy, WebhookConfig
from pipeline.alerts.signing import Scheme
from pipeline.alerts.webhook import check_webhook_urls
from pipeline.config.base import ENV_NAME, ConfigError, ConfigPath, EnvStr, FromEnv, Section
from pipeline.stream.messages import VerdictLabel

__all__ = ["AlertsConfig", "WebhooksConfig"]


class WebhooksConfig(Section):
    """Signed webhook delivery; the HMAC secret is read from the environment variable named by `secret_env`."""

    urls: list[EnvStr] = Field(min_length=1)
    secret_env: str = Field("CLIPWATCH_WEBHOOK_SECRET", pattern=ENV_NAME)
    signature: Scheme = Field("v2", description="v2: timestamped 't=..,v1=..' (replays refused); v1: legacy "
                                                "'sha256=..' of the body, for receivers not yet updated")
    ledger: ConfigPath = Field(Path("webhook-ledger.jsonl"), description="durable outbox and delivery record")
    dead_letters: ConfigPath = Field(Path("webhook-dead-letters.jsonl"))
    timeout_s: float = Field(5.0, gt=0.0)
    retry: Annotated[RetryPolicy, FromEnv] = Field(default_factory=RetryPolicy)
    workers_per_url: int = Field(2, ge=1, le=64)
    flush_timeout_s: float = Field(30.0, ge=0.0, description="on shutdown, wait this long for deliveries")

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        return check_webhook_urls(urls)


class AlertsConfig(Section):
    """What the sink records: alert rules, the alert log, optional verdict/health logs, thumbnails, webhooks, MQTT."""

    rules: Annotated[AlertRulesConfig, FromEnv] = Field(default_factory=AlertRulesConfig)
    jsonl: ConfigPath = Field(Path("alerts.jsonl"), description="durable alert log, one line per alert")
    verdicts_jsonl: ConfigPath | None = Field(None, description="every verdict, once per clip key")
    health_jsonl: ConfigPath | None = Field(None, description="every stream health change")
    thumbnails_dir: ConfigPath | None = Field(None, description="store alert thumbnails here, by SHA-256")
    reorder_window_s: float = Field(2.0, ge=0.0, description="hold a stream's verdicts this long for a missing "
                                                               "earlier clip, so rules see each stream in order")
    max_seq_jump: int | None = Field(10_000, ge=1, description="dead-letter a verdict this many seqs ahead of its "
                                                               "stream (not a decoder restart); None: no check")
    print: bool = Field(True, description="print each alert on stdout as it fires")
    webhooks: WebhooksConfig | None = None
    mqtt: Annotated[MqttConfig, FromEnv] | None = Field(None, description="publish Frigate-style events to a broker")

    @field_validator("rules")
    @classmethod
    def _check_kinds(cls, rules: AlertRulesConfig) -> AlertRulesConfig:
        alerting = [label for label in typing.get_args(VerdictLabel) if label != "normal"]
        unknown = sorted(set(rules.kinds) - set(alerting))
        if unknown:
            close = difflib.get_close_matches(unknown[0], alerting, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"kinds.{unknown[0]}: not a verdict the detector gives{hint}; alert kinds are "
                             f"{', '.join(alerting)}, and a misspelt one would never alert")
        return rules

    def webhook_config(self, source: str = "config", environ: Mapping[str, str] | None = None) -> WebhookConfig | None:
        """The `WebhookConfig` with its secret taken from the environment; ConfigError if the variable is unset."""
        hooks = self.webhooks
        if hooks is None:
            return None
        secret = (os.environ if environ is None else environ).get(hooks.secret_env, "")
        if not secret:
            raise ConfigError(f"{source}: alerts.webhooks.secret_env: environment variable {hooks.secret_env} "
                              "is not set or empty")
        return WebhookConfig(urls=hooks.urls, secret=secret, signature=hooks.signature, ledger_path=hooks.ledger,
                             dead_letter_path=hooks.dead_letters, timeout_s=hooks.timeout_s, retry=hooks.retry,
                             workers_per_url=hooks.workers_per_url)
