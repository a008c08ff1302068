"""Typed, validated pipeline configuration loaded from a TOML file (``conf/pipeline.toml``).

Usage::

    cfg = load_config("conf/pipeline.toml", overrides=["stream.max_files_per_trigger=4"])
    cfg.sessions.gap_seconds  # 1800.0
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from lib.core.paths import PROJECT_ROOT

DEFAULT_CONFIG_PATH = PROJECT_ROOT / "conf" / "pipeline.toml"

_DURATION_RE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*"
    r"(ms|millis|milliseconds?|s|secs?|seconds?|m|mins?|minutes?|h|hours?|d|days?)\s*$",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"ms": 0.001, "mil": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and how to fix it."""


def parse_duration(text: str, key: str) -> float:
    """Parse ``"30 minutes"``, ``"1 second"``, ``"500 ms"`` into seconds."""
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ConfigError(f'{key} = {text!r} is not a duration; write e.g. "30 minutes", "10 seconds" or "500 ms"')
    amount, unit = float(match.group(1)), match.group(2).lower()
    factor = _UNIT_SECONDS["mil"] if unit.startswith("mil") or unit == "ms" else _UNIT_SECONDS[unit[0]]
    return amount * factor


def micros(seconds: float) -> int:
    """Seconds as whole microseconds (Spark's timestamp unit), rounded to the nearest."""
    return int(round(seconds * 1_000_000))


def _resolve_path(value: str) -> str:
    """Relative paths are relative to the current directory; URIs (hdfs://, s3a://, file:/) stay as-is."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/", value):
        return value
    return os.path.abspath(value)


@dataclass(frozen=True)
class PathsConfig:
    events_dir: str = "data/stream/incoming"
    purchases: str = "data/historical_purchases.parquet"
    lake: str = "data/lake"
    checkpoints: str = "data/checkpoints"
    # The embedded online store (SQLite) the stream writes and the API reads: a local file.
    online_store: str = "data/online/streamrec.sqlite"
    # The Hive metastore (a Derby database served by a Derby network server) naming the tables.
    metastore: str = "data/metastore"

    def table(self, name: str) -> str:
        """Location of the Delta table ``name`` under the lake."""
        return f"{self.lake.rstrip('/')}/{name}"

    def checkpoint(self, name: str) -> str:
        return f"{self.checkpoints.rstrip('/')}/{name}"


# The main query's folder under paths.checkpoints.
STREAM_CHECKPOINT = "stream"


@dataclass(frozen=True)
class StreamConfig:
    max_files_per_trigger: int = 1
    trigger_interval: str = "1 second"
    # The Delta side beyond appends (session_features, user_profiles, the mirrors of the live
    # tables, stream_metrics) is folded from the online store this often (lib/stream/slow.py).
    slow_interval: str = "30 seconds"
    max_line_chars: int = 4096
    # Every this many slow passes (stream.slow_interval) the stream compacts its table with the most
    # data files, so small per-batch files do not pile up; 0 turns compaction off.
    compact_every: int = 10

    @cached_property
    def trigger_interval_seconds(self) -> float:
        return parse_duration(self.trigger_interval, "stream.trigger_interval")

    @cached_property
    def slow_interval_seconds(self) -> float:
        return parse_duration(self.slow_interval, "stream.slow_interval")


SOURCE_KINDS = ("files", "kafka")
STARTING_OFFSETS = ("earliest", "latest")


@dataclass(frozen=True)
class SourceConfig:
    # "files": CSV files landing in paths.events_dir; "kafka": JSON messages on kafka.topic.
    kind: str = "files"


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "activity"
    # Where a new checkpoint starts reading; a resumed one continues from its own offsets.
    starting_offsets: str = "earliest"
    # At most this many messages per micro-batch (spread over the partitions); 0: no limit.
    max_offsets_per_trigger: int = 0
    # Kafka consumer settings passed through to Spark's source as kafka.<key>, from [kafka.options].
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SessionsConfig:
    gap: str = "30 minutes"
    watermark: str = "10 minutes"

    @cached_property
    def gap_seconds(self) -> float:
        return parse_duration(self.gap, "sessions.gap")

    @cached_property
    def watermark_seconds(self) -> float:
        return parse_duration(self.watermark, "sessions.watermark")


@dataclass(frozen=True)
class LakeConfig:
    # Files no table version within this period needs are deleted (Delta VACUUM), so the lake
    # does not grow without bound; time travel reaches back this far.
    retention: str = "168 hours"
    # Every this many micro-batches the stream vacuums its tables; 0 leaves it to a maintenance job.
    vacuum_every: int = 100
    # The stream's tables write a Delta log checkpoint every this many commits (one a micro-batch).
    # A checkpoint costs its batch about a second a table; every commit since the last one costs
    # each later batch (and a reader loading the table cold) a little more log to replay.
    checkpoint_interval: int = 30

    @cached_property
    def retention_hours(self) -> float:
        return parse_duration(self.retention, "lake.retention") / 3600.0


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000


MODELS = ("popularity", "item_knn", "ease", "als")


@dataclass(frozen=True)
class RecommendConfig:
    top_k: int = 10
    exclude_seen: bool = True
    model: str = "ease"
    # Interaction strength of each signal; a user-item pair keeps its strongest signal.
    view_weight: float = 1.0
    click_weight: float = 2.0
    add_to_cart_weight: float = 3.0
    purchase_weight: float = 5.0
    # Scored candidates kept per user in the model artifact (>= top_k; the stream re-ranks them).
    candidates: int = 100
    # Neighbours kept per item for item-to-item scoring and live re-ranking.
    neighbours: int = 100
    # EASE L2 penalty: "auto" picks it on a validation split, a number fixes it.
    ease_lambda: str = "auto"
    # With a fixed ease_lambda: the EDLAE dropout penalty in [0, 1) ("auto" searches it too).
    ease_dropout: float = 0.0
    # EASE solves a dense items x items system on the driver; above this, item_knn is used.
    ease_max_items: int = 8000
    als_rank: int = 64
    als_max_iter: int = 15
    als_reg: float = 0.05
    als_alpha: float = 20.0
    # Live re-ranking: share of the session signal against the model's score, and how fast
    # older session events fade.
    session_weight: float = 0.6
    session_half_life: str = "10 minutes"
    # Session neighbourhood (lib/recommend/session_knn.py): past sessions kept in the model, the most
    # recent sharing an item that are compared, the most similar that score, and the shares of
    # sequential rules and of the session's own items in the session signal.
    session_index_size: int = 100_000
    session_sample: int = 5000
    session_neighbours: int = 500
    sequence_weight: float = 0.5
    repeat_weight: float = 0.3
    # With exclude_seen: may live recommendations bring back items of the current session?
    live_repeats: bool = False
    profile_top_items: int = 10
    seed: int = 42

    @cached_property
    def session_half_life_seconds(self) -> float:
        return parse_duration(self.session_half_life, "recommend.session_half_life")

    @property
    def event_weights(self) -> dict[str, float]:
        return {"view": self.view_weight, "click": self.click_weight, "add_to_cart": self.add_to_cart_weight}

    @property
    def ease_lambda_value(self) -> float | None:
        """The fixed EASE penalty, or None for "auto"."""
        if self.ease_lambda.strip().lower() == "auto":
            return None
        try:
            value = float(self.ease_lambda)
        except ValueError:
            raise ConfigError(
                f'recommend.ease_lambda = {self.ease_lambda!r} must be "auto" or a positive number'
            ) from None
        if value <= 0:
            raise ConfigError(f'recommend.ease_lambda = {self.ease_lambda!r} must be "auto" or a positive number')
        return value


@dataclass(frozen=True)
class Config:
    """Every section of ``conf/pipeline.toml``. Durations are text in the file ("30 minutes") and
    read as numbers through properties (``sessions.gap_seconds``), parsed on first use and kept."""

    paths: PathsConfig = field(default_factory=PathsConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    lake: LakeConfig = field(default_factory=LakeConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)

    def validate(self) -> "Config":
        if self.stream.max_files_per_trigger < 1:
            raise ConfigError("stream.max_files_per_trigger must be >= 1")
        if self.stream.compact_every < 0:
            raise ConfigError("stream.compact_every must be >= 0 (0 turns compaction off)")
        if self.stream.trigger_interval_seconds < 0:
            raise ConfigError("stream.trigger_interval must not be negative")
        if self.stream.slow_interval_seconds <= 0:
            raise ConfigError('stream.slow_interval must be positive, e.g. "30 seconds"')
        if self.stream.max_line_chars < 64:
            raise ConfigError("stream.max_line_chars must be >= 64")
        if self.sessions.gap_seconds <= 0:
            raise ConfigError('sessions.gap must be positive, e.g. "30 minutes"')
        if self.sessions.watermark_seconds < 0:
            raise ConfigError("sessions.watermark must not be negative")
        if "://" in self.paths.metastore or self.paths.metastore.startswith("file:"):
            raise ConfigError(
                f"paths.metastore = {self.paths.metastore!r} must be a local folder (the Derby metastore lives on the "
                'driver\'s disk); write a path such as "data/metastore"'
            )
        if self.source.kind not in SOURCE_KINDS:
            raise ConfigError(f"source.kind = {self.source.kind!r} is unknown; choose one of {', '.join(SOURCE_KINDS)}")
        kafka = self.kafka
        if self.source.kind == "kafka" and not (kafka.bootstrap_servers.strip() and kafka.topic.strip()):
            raise ConfigError('source.kind = "kafka" needs kafka.bootstrap_servers and kafka.topic')
        if kafka.starting_offsets not in STARTING_OFFSETS:
            raise ConfigError(
                f"kafka.starting_offsets = {kafka.starting_offsets!r} must be one of {', '.join(STARTING_OFFSETS)}"
            )
        if kafka.max_offsets_per_trigger < 0:
            raise ConfigError("kafka.max_offsets_per_trigger must be >= 0 (0: no limit)")
        if not 0 < self.serve.port < 65536:
            raise ConfigError(f"serve.port = {self.serve.port} must be a TCP port (1-65535)")
        if self.lake.vacuum_every < 0:
            raise ConfigError("lake.vacuum_every must be >= 0 (0 leaves VACUUM to a maintenance job)")
        if self.lake.checkpoint_interval < 1:
            raise ConfigError("lake.checkpoint_interval must be >= 1 (commits between Delta log checkpoints)")
        if self.lake.retention_hours <= 0:
            raise ConfigError('lake.retention must be positive, e.g. "168 hours"')
        rec = self.recommend
        if rec.top_k < 1:
            raise ConfigError("recommend.top_k must be >= 1")
        if rec.model not in MODELS:
            raise ConfigError(f"recommend.model = {rec.model!r} is unknown; choose one of {', '.join(MODELS)}")
        if rec.candidates < rec.top_k:
            raise ConfigError(f"recommend.candidates ({rec.candidates}) must be >= recommend.top_k ({rec.top_k})")
        if rec.neighbours < 1 or rec.ease_max_items < 1 or rec.profile_top_items < 1:
            raise ConfigError("recommend.neighbours, ease_max_items and profile_top_items must be >= 1")
        weights = [rec.view_weight, rec.click_weight, rec.add_to_cart_weight, rec.purchase_weight]
        if any(w <= 0 for w in weights):
            raise ConfigError("recommend.*_weight must all be positive")
        if not 0.0 <= rec.session_weight <= 1.0:
            raise ConfigError("recommend.session_weight must be between 0 and 1")
        if rec.als_rank < 1 or rec.als_max_iter < 1 or rec.als_reg < 0 or rec.als_alpha <= 0:
            raise ConfigError("recommend.als_rank/als_max_iter must be >= 1, als_reg >= 0, als_alpha > 0")
        rec.ease_lambda_value
        if not 0.0 <= rec.ease_dropout < 1.0:
            raise ConfigError("recommend.ease_dropout must be in [0, 1)")
        if rec.session_half_life_seconds <= 0:
            raise ConfigError("recommend.session_half_life must be positive")
        if min(rec.session_index_size, rec.session_sample, rec.session_neighbours) < 1:
            raise ConfigError(
                "recommend.session_index_size, session_sample and session_neighbours must be >= 1 "
                "(a session_index_size of 1 keeps just one past session)"
            )
        if rec.sequence_weight < 0 or rec.repeat_weight < 0:
            raise ConfigError("recommend.sequence_weight and repeat_weight must be >= 0 (0 turns the signal off)")
        return self


_SECTION_CLASSES = {
    "paths": PathsConfig,
    "stream": StreamConfig,
    "sessions": SessionsConfig,
    "recommend": RecommendConfig,
    "lake": LakeConfig,
    "serve": ServeConfig,
    "source": SourceConfig,
    "kafka": KafkaConfig,
}


def _coerce(section: str, key: str, value, expected):
    label = f"{section}.{key}"
    if expected is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{label} = {value!r} must be true or false")
    if expected is int:
        if isinstance(value, bool):
            raise ConfigError(f"{label} = {value!r} must be a whole number")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{label} = {value!r} must be a whole number") from None
    if expected is float:
        if isinstance(value, bool):
            raise ConfigError(f"{label} = {value!r} must be a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{label} = {value!r} must be a number") from None
    if expected is dict:
        if not isinstance(value, dict):
            raise ConfigError(f'{label} must be a table of settings, e.g. [{label}] then key = "value" lines')
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    if expected is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{label} = {value!r} must be a string")
        return str(value)
    return value


def _parse_override(text: str) -> tuple[str, str, str]:
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. stream.max_files_per_trigger=4")
    dotted, value = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    return section, key, value.strip().strip('"')


def _apply_override(raw: dict, section: str, key: str, value: str) -> None:
    """``kafka.options.<name>=v`` sets one entry of the ``[kafka.options]`` table."""
    head, _, rest = key.partition(".")
    if rest and head == "options":
        raw.setdefault(section, {}).setdefault("options", {})[rest] = value
    else:
        raw.setdefault(section, {})[key] = value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Load, override and validate the configuration.

    :param path: TOML file; ``conf/pipeline.toml`` of the project when None.
    :param overrides: ``section.key=value`` strings applied after the file.
    """
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config PATH to an existing TOML file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for section, key, value in (_parse_override(o) for o in overrides or []):
        _apply_override(raw, section, key, value)

    unknown_sections = set(raw) - set(_SECTION_CLASSES)
    if unknown_sections:
        raise ConfigError(
            f"unknown config section(s) {sorted(unknown_sections)} in {path}; known: {sorted(_SECTION_CLASSES)}"
        )
    sections = {}
    for name, cls in _SECTION_CLASSES.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] in {path} must be a table of keys")
        types = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in [{name}] of {path}; known: {sorted(known)}")
        kwargs = {k: _coerce(name, k, v, types[k]) for k, v in values.items()}
        if name == "paths":
            kwargs = {k: _resolve_path(v) for k, v in {**dataclasses.asdict(cls()), **kwargs}.items()}
        sections[name] = cls(**kwargs)
    # validate() reads every duration: a typo fails here, not hours into a run, and each is parsed once.
    return Config(**sections).validate()


def config_toml(sections: dict[str, dict[str, object]]) -> str:
    """The TOML text of ``sections`` (section -> key -> string, path, number or bool): a config
    file for jobs started by spark-submit, e.g. ``{"paths": {"lake": "/tmp/x/lake"}}``."""
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        # JSON's strings, numbers and booleans are TOML's too.
        lines += [f"{key} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for key, v in values.items()]
    return "\n".join(lines) + "\n"
