"""The pipeline configuration: pydantic models of the YAML files read by ``clipwatch run`` and ``clipwatch worker``.

    config = load_config("configs/local.yaml")   # ConfigError: "configs/local.yaml: sources.0.urii: unknown key ..."

Every section forbids unknown keys, so a typo fails at start with one line naming the file and the key path.
String values may use ``${VAR}`` or ``${VAR:-default}``: environment variables are substituted after the YAML is
parsed (a value can never inject YAML). Relative paths are relative to the config file's directory, so a config
means the same thing whatever the working directory of the process that reads it.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.alerts import AlertRulesConfig, RetryPolicy, WebhookConfig

__all__ = [
    "STAGES",
    "AlertsConfig",
    "BusConfig",
    "ClassifierConfig",
    "ConfigError",
    "DecoderConfig",
    "DensityConfig",
    "OpsConfig",
    "PipelineConfig",
    "SourceConfig",
    "WebhooksConfig",
    "load_config",
    "parse_config",
]

STAGES = ("decoder", "classifier", "density", "sink")
"""The pipeline's stages in flow order; `OpsConfig.base_port` + the index is a stage's default ops port."""

SOURCE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "tcp", "srt", "file"})
BUS_SCHEMES = frozenset({"memory", "redis", "rediss", "unix"})
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class ConfigError(ValueError):
    """A configuration that cannot be used; one line: ``"<file>: <key path>: <reason>"``."""


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """A relative path made absolute against the config file's directory (the validation context's ``base``)."""
    value = value.expanduser()
    base = (info.context or {}).get("base")
    return value if value.is_absolute() or base is None else (Path(base) / value).resolve()


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are immutable, defaults validated (paths resolved)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SourceConfig(Section):
    """One input: a video file, a directory of videos, a stream URL or a webcam (exactly one of path/uri/webcam)."""

    id: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-/]+$",
                           description="stream id in clip keys (a directory's files: <id>/<path inside it>); default: "
                                       "file stem, directory name, URL without password, cameraN")
    path: ConfigPath | None = Field(None, description="a video file, or a directory scanned for videos, read one after "
                                     "another (simultaneous cameras need a source each)")
    uri: str | None = Field(None, description="rtsp/http(s)/udp/... stream, or file:// URL read as a stream")
    webcam: int | None = Field(None, ge=0, description="camera index")
    loop: bool = Field(False, description="replay a file (or every file of a directory) forever")
    pace: float | None = Field(None, gt=0.0, description="replay files at this multiple of real time; "
                                                         "None: as fast as the pipeline takes them")
    stride: int | None = Field(None, ge=1, description="frames between clip starts (default: the clip length)")
    recursive: bool = Field(True, description="scan sub-directories of a directory source")
    open_timeout_s: float = Field(10.0, gt=0.0)
    stall_timeout_s: float = Field(5.0, gt=0.0)
    max_reconnects: int | None = Field(None, ge=0, description="reconnects in a row before giving up; None: never")
    backoff_initial_s: float = Field(0.5, gt=0.0)
    backoff_max_s: float = Field(30.0, gt=0.0)
    options: dict[str, str] = Field(default_factory=dict, description="FFmpeg options of a stream (PyAV backend)")

    @field_validator("uri")
    @classmethod
    def _check_uri(cls, uri: str | None) -> str | None:
        if uri is None:
            return None
        parts = urlsplit(uri)
        if parts.scheme not in SOURCE_SCHEMES:
            raise ValueError(f"unsupported scheme {parts.scheme!r} (use one of {', '.join(sorted(SOURCE_SCHEMES))})")
        if parts.scheme != "file" and not parts.hostname:
            raise ValueError("a stream URL needs a host")
        return uri

    @model_validator(mode="after")
    def _one_input(self) -> SourceConfig:
        given = [name for name in ("path", "uri", "webcam") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, uri, webcam (got {', '.join(given) or 'none'})")
        if (self.loop or self.pace is not None) and self.path is None:
            raise ValueError("loop and pace apply to path sources only")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError("backoff_initial_s must not exceed backoff_max_s")
        return self

    @property
    def is_live(self) -> bool:
        """Live sources (streams, cameras, looped files) run until stopped; the others end."""
        return self.path is None or self.loop

    @property
    def stream_id(self) -> str | None:
        """The stream id of a file, URL or camera; a directory's files get ``<this>/<path inside it, no suffix>``.

        `id` if set, else the file stem, the directory name, the URL without its password or ``cameraN``; None for
        a path that does not exist (it is skipped at run time).
        """
        if self.id is not None:
            return self.id
        if self.webcam is not None:
            return f"camera{self.webcam}"
        if self.uri is not None:
            from pipeline.video.errors import describe_source

            return describe_source(self.uri)
        if self.path.is_file():
            return self.path.stem
        return self.path.name if self.path.is_dir() else None


class BusConfig(Section):
    """The transport between stages and its delivery settings (see `pipeline.bus`)."""

    url: str = Field("memory://", description="memory:// (threads in one process) or redis://host:port/db")
    namespace: str = Field("clipwatch", pattern=r"^[A-Za-z0-9_.\-:]+$", description="prefix of Redis keys")
    max_backlog: int = Field(64, ge=1, le=1_000_000, description="publish blocks while a topic's backlog is here")
    visibility_timeout_ms: int = Field(30_000, ge=100, description="redeliver entries unacknowledged this long")
    max_deliveries: int = Field(5, ge=1, le=1000, description="deliveries before an entry is dead-lettered")
    publish_timeout_s: float | None = Field(None, gt=0.0, description="give up a blocked publish; None: wait")
    reconnect_timeout_s: float | None = Field(120.0, gt=0.0, description="Redis outage tolerated; None: forever")
    reset_alarm_s: float | None = Field(3600.0, ge=0.0,
                                        description="how long /healthz reports a Redis that lost its data; None: "
                                                    "until the worker restarts")
    max_message_mb: float = Field(16.0, gt=0.0, le=512.0, description="largest message accepted")
    dedupe_keys: int = Field(100_000, ge=1, description="recent clip keys each stage remembers to drop redeliveries")

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in BUS_SCHEMES:
            raise ValueError(f"unsupported bus scheme {scheme!r} (use memory:// or redis://host:port/db)")
        return url

    @property
    def max_bytes(self) -> int:
        return int(self.max_message_mb * 2**20)


class DecoderConfig(Section):
    """How sources become clips."""

    resize: Literal["model", "source"] = Field(
        "model", description="model: frames are resized to the model's short side before publishing (exactly the "
                             "resize the classifier would do, at a fraction of the bytes); source: full resolution")


class ClassifierConfig(Section):
    """Batching and runtime of the classifier stage."""

    max_batch: int = Field(8, ge=1, le=1024, description="clips per forward pass, from any streams")
    max_wait_ms: int = Field(50, ge=0, le=60_000, description="wait this long for a batch to fill")
    threads: int | None = Field(None, ge=1, le=512, description="torch CPU threads; None: torch's default")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$")
    thumbnail_size: int = Field(160, ge=0, le=1024, description="longest side of the JPEG thumbnail; 0: none")
    thumbnail_quality: int = Field(80, ge=1, le=100)


class DensityConfig(Section):
    """Batching of the density stage and an optional override of the bundle's false-alarm rate."""

    max_batch: int = Field(64, ge=1, le=65_536)
    max_wait_ms: int = Field(10, ge=0, le=60_000)
    alpha: float | None = Field(None, gt=0.0, lt=1.0, description="false-alarm rate; None: the bundle's")


class WebhooksConfig(Section):
    """Signed webhook delivery; the HMAC secret is read from the environment variable named by `secret_env`."""

    urls: list[str] = Field(min_length=1)
    secret_env: str = Field("CLIPWATCH_WEBHOOK_SECRET", pattern=_ENV_NAME)
    ledger: ConfigPath = Field(Path("webhook-ledger.jsonl"), description="durable outbox and delivery record")
    dead_letters: ConfigPath = Field(Path("webhook-dead-letters.jsonl"))
    timeout_s: float = Field(5.0, gt=0.0)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    workers_per_url: int = Field(2, ge=1, le=64)
    flush_timeout_s: float = Field(30.0, ge=0.0, description="on shutdown, wait this long for deliveries")

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r}: a webhook URL must be http(s)://host/...")
        return urls


class AlertsConfig(Section):
    """What the sink records: alert rules, the alert log, optional verdict/health logs, thumbnails, webhooks."""

    rules: AlertRulesConfig = Field(default_factory=AlertRulesConfig)
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

    def webhook_config(self, source: str = "config", environ: Mapping[str, str] | None = None) -> WebhookConfig | None:
        """The `WebhookConfig` with its secret taken from the environment; ConfigError if the variable is unset."""
        hooks = self.webhooks
        if hooks is None:
            return None
        secret = (os.environ if environ is None else environ).get(hooks.secret_env, "")
        if not secret:
            raise ConfigError(f"{source}: alerts.webhooks.secret_env: environment variable {hooks.secret_env} "
                              "is not set or empty")
        return WebhookConfig(urls=hooks.urls, secret=secret, ledger_path=hooks.ledger,
                             dead_letter_path=hooks.dead_letters, timeout_s=hooks.timeout_s, retry=hooks.retry,
                             workers_per_url=hooks.workers_per_url)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpsConfig(Section):
    """Operations: the /healthz and /metrics HTTP port of each worker, and log format."""

    host: str = Field("127.0.0.1", description="address the ops HTTP server binds (0.0.0.0 in containers, with a "
                                               "token)")
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                  description="environment variable holding the bearer token /healthz and /metrics "
                                              "require; None: no token")
    base_port: int = Field(0, ge=0, le=65_535, description="0: ephemeral ports (logged); else stage i uses base+i")
    ports: dict[Literal["decoder", "classifier", "density", "sink", "run"], Annotated[int, Field(ge=0, le=65_535)]] \
        = Field(default_factory=dict, description="explicit ops port per worker (\"run\": the in-process pipeline)")
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    lag_interval_s: float = Field(1.0, gt=0.0, description="how often queue lag gauges are refreshed")
    stop_timeout_s: float = Field(20.0, gt=0.0, description="on SIGTERM, seconds to finish the batch in flight "
                                                            "before giving up on the bus (Docker waits 30)")

    def token(self) -> str | None:
        """The bearer token from ``token_env``, None without one.

        An unset variable is allowed on a loopback address only: ConfigError rather than expose the endpoints
        without the token the config asks for.
        """
        value = os.environ.get(self.token_env, "") if self.token_env else ""
        if value:
            return value
        if self.token_env and not _is_loopback(self.host):
            raise ConfigError(f"ops.token_env: {self.token_env} is not set, and ops.host {self.host} is not "
                              "loopback: set the token or bind 127.0.0.1")
        return None

    @property
    def is_loopback(self) -> bool:
        return _is_loopback(self.host)

    def port_for(self, stage: str) -> int:
        """The ops port of `stage` ("run" for the in-process pipeline): explicit, else base + index, else 0."""
        if stage in self.ports:
            return self.ports[stage]
        if not self.base_port:
            return 0
        return self.base_port + (STAGES.index(stage) if stage in STAGES else 0)


class PipelineConfig(Section):
    """The whole pipeline; `source_file` is where it was loaded from (used in error messages)."""

    sources: list[SourceConfig] = Field(default_factory=list)
    bundle: ConfigPath = Field(description="detector bundle directory (bundle.json, densities, calibration)")
    bus: BusConfig = Field(default_factory=BusConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    density: DensityConfig = Field(default_factory=DensityConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    ops: OpsConfig = Field(default_factory=OpsConfig)
    _source_file: str = PrivateAttr("config")

    @field_validator("bundle")
    @classmethod
    def _check_bundle(cls, bundle: Path) -> Path:
        if not bundle.is_dir():
            raise ValueError(f"{bundle}: no such bundle directory")
        if not (bundle / "bundle.json").is_file():
            raise ValueError(f"{bundle}: not a detector bundle (no bundle.json; make one with `clipwatch fit`)")
        return bundle

    @model_validator(mode="after")
    def _check_consistency(self) -> PipelineConfig:
        ids = [source.id for source in self.sources if source.id is not None]
        repeated = sorted({name for name in ids if ids.count(name) > 1})
        if repeated:
            raise ValueError(f"sources: stream ids must be unique, repeated: {', '.join(repeated)}")
        _check_stream_ids(self.sources)
        return self

    @property
    def source_file(self) -> str:
        return self._source_file

    def webhook_config(self, environ: Mapping[str, str] | None = None) -> WebhookConfig | None:
        return self.alerts.webhook_config(self._source_file, environ)


def _check_stream_ids(sources: list[SourceConfig]) -> None:
    """Refuse two sources whose streams could share an id: their clips would have the same keys, and every stage
    would drop the second one's clips as already done."""
    for first, one in enumerate(sources):
        for second in range(first + 1, len(sources)):
            other = sources[second]
            a, b = one.stream_id, other.stream_id
            if a is None or b is None:
                continue
            nested = ((b.startswith(f"{a}/") and one.path is not None and one.path.is_dir())
                      or (a.startswith(f"{b}/") and other.path is not None and other.path.is_dir()))
            if a == b or nested:
                raise ValueError(f"sources.{first} ({_source_name(one)}, stream id {a!r}) and sources.{second} "
                                 f"({_source_name(other)}, stream id {b!r}) would give clips the same keys; "
                                 "set a distinct `id` on one of them")


def _source_name(source: SourceConfig) -> str:
    """A source's input as error messages name it (a URL without its password)."""
    from pipeline.video.errors import describe_source

    return describe_source(source.path if source.path is not None else
                           source.uri if source.uri is not None else source.webcam)


def load_config(path: str | os.PathLike, environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """Read, interpolate and validate a YAML config; ConfigError (one line, naming file and key) on any problem."""
    name = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{name}: cannot read config: {getattr(error, 'strerror', None) or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{name}: {where}invalid YAML: {_one_line(problem)}") from None
    return parse_config(data, source=name, base=Path(path).resolve().parent, environ=environ)


def parse_config(data: Any, *, source: str = "config", base: str | os.PathLike | None = None,
                 environ: Mapping[str, str] | None = None) -> PipelineConfig:
    """Validate already-parsed config data; relative paths resolve against `base` (default: working directory)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config must be a mapping of sections, got {type(data).__name__}")
    data = _interpolate(data, os.environ if environ is None else environ, source, ())
    try:
        config = PipelineConfig.model_validate(data, context={"base": Path(base or os.getcwd())})
    except ValidationError as error:
        raise ConfigError(f"{source}: {_describe(error)}") from None
    config._source_file = source
    return config


def _interpolate(value: Any, environ: Mapping[str, str], source: str, where: tuple) -> Any:
    """`value` with ``${VAR}`` / ``${VAR:-default}`` replaced in every string."""
    if isinstance(value, dict):
        return {key: _interpolate(item, environ, source, (*where, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, environ, source, (*where, index)) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        found = environ.get(name)
        if found is None or (found == "" and default is not None):
            if default is None:
                key = ".".join(map(str, where)) or "config"
                raise ConfigError(f"{source}: {key}: environment variable {name} is not set")
            return default
        return found

    return _ENV_REFERENCE.sub(substitute, value)


def _describe(error: ValidationError) -> str:
    """The first validation problem as ``key.path: reason``, plus how many more there are."""
    problems = error.errors(include_url=False, include_input=False)
    first = problems[0]
    location = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        reason = "unknown key" + _suggestion(first["loc"])
    elif first["type"] == "missing":
        reason = "required key is missing"
    else:
        reason = first["msg"].removeprefix("Value error, ")
    more = len(problems) - 1
    text = f"{location}: {_one_line(reason)}" if location else _one_line(reason)
    return text + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")


def _suggestion(loc: tuple) -> str:
    """`` (did you mean 'x'?)`` for an unknown key close to a known one at the same place."""
    model: Any = PipelineConfig
    for part in loc[:-1]:
        model = _step_into(model, part)
    model = _unwrap(model)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unwrap(annotation: Any) -> Any:
    """`annotation` without Annotated[...] and Optional[...] wrappers (None for a union of several types)."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            annotation = options[0] if len(options) == 1 else None
        else:
            return annotation


def _step_into(annotation: Any, part: Any) -> Any:
    """The type reached from `annotation` by one key-path part (a field name, list index or dict key)."""
    annotation = _unwrap(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is dict:
        return typing.get_args(annotation)[1]
    return None


def _one_line(text: object) -> str:
    return re.sub(r"\s+", " ", str(text)).strip()
