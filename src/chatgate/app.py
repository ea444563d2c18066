"""Builds the ASGI app: settings -> services -> routes. No logic of its own."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from chatgate.api import admin, assistants, chat_api, docs, health, openai, rag, web
from chatgate.api import chatkit as chatkit_api
from chatgate.api import metrics as metrics_api
from chatgate.api.asgi import Endpoint
from chatgate.api.doors import OpenAIDoor
from chatgate.api.errors import EXCEPTION_HANDLERS
from chatgate.api.fastlane import GatewayApp
from chatgate.api.middleware import Authenticate, BodyLimit, RequestLog, RouteLimits
from chatgate.api.tracing import TraceRequests
from chatgate.cache import MemoryCache, RedisCache, ResponseCache
from chatgate.cache.answers import CachedAnswers
from chatgate.context import ContextFitter, Summariser, WindowResolver
from chatgate.identity.jwt import JWTVerifier
from chatgate.identity.keys import ADMIN, Credentials, JWTSignIn, StaticKeys, StoredKeys, bootstrap_admin_digest
from chatgate.identity.resolve import IdentityResolver
from chatgate.limits import Limiter, MemoryLimiter, RedisLimiter, SharedLimiter
from chatgate.limits.admit import Admission
from chatgate.limits.shared import FILE as SHARED_FILE
from chatgate.observe.logging import AccessLog
from chatgate.observe.logging import configure as configure_logging
from chatgate.observe.metrics import Metrics, metrics_dir
from chatgate.observe.requests import RequestRecorder
from chatgate.observe.tracing import TracedAccessLog, Tracing
from chatgate.rag.dense import DenseIndex
from chatgate.rag.embedders import build_embedder
from chatgate.rag.ground import Grounder
from chatgate.rag.lexical import LexicalIndex
from chatgate.rag.lexical_fts5 import Fts5Search
from chatgate.rag.lexical_pg import PgFullText
from chatgate.rag.lexical_postings import ChunkFeed, PostingsSearch
from chatgate.rag.postings_pg import PostgresFeed
from chatgate.rag.postings_sqlite import SqliteFeed
from chatgate.rag.service import Rag
from chatgate.sessions.connections import Connections
from chatgate.sessions.manager import SessionManager
from chatgate.sessions.personalise import Personaliser
from chatgate.sessions.tasks import TaskRecogniser
from chatgate.settings import Settings, load_settings
from chatgate.store.db import Store, database_url
from chatgate.store.writebehind import WriteBehind
from chatgate.tokens.counter import TokenCounter
from chatgate.tools.loop import ToolLoop
from chatgate.tools.registry import Tools, tool_names
from chatgate.turn import Services
from chatgate.upstream import local_embeddings
from chatgate.upstream.breaker import CircuitBreaker
from chatgate.upstream.catalog import ModelCatalog
from chatgate.upstream.client import UpstreamClient
from chatgate.upstream.local import model_file
from chatgate.upstream.routing import Router, Upstream

log = logging.getLogger("chatgate")

ANONYMOUS_PATHS = frozenset({"/v1/chat/completions", "/v1/models", "/api/v1/chat"})
GC_THRESHOLD = 20_000  # allocations between young-generation collections (Python's default: 700)
PIPELINE_PATHS = frozenset({"/v1/chat/completions", "/v1/embeddings", "/api/v1/chat"})  # limited in the pipeline


def build_upstream(settings: Settings, tracing: Tracing | None = None, rag: Rag | None = None) -> UpstreamClient:
    """The upstream client over every configured upstream; with ``rag``, its local embedding model too, as an
    in-process upstream on standby (``rag.embeddings.serve``)."""
    upstreams = [
        Upstream(
            name=u.name,
            base_url=u.base_url,
            api_key=u.api_key.get_secret_value() if u.api_key else None,
            weight=u.weight,
            timeout=u.timeout,
            first_byte=u.first_byte_timeout,
            max_retries=u.max_retries,
            configured_models=tuple(u.models),
            chat_defaults=dict(u.chat_defaults),
            breaker=CircuitBreaker.from_settings(settings.breaker),
        )
        for u in settings.all_upstreams()
    ]
    aliases = settings.all_aliases()
    embeddings = settings.rag.embeddings
    if rag is not None and embeddings.backend == "local" and embeddings.serve:
        upstreams.append(
            Upstream(
                name=local_embeddings.UPSTREAM_NAME,
                base_url="",
                configured_models=(embeddings.model,),
                target=local_embeddings.LocalEmbeddings(rag.shared_embedder, embeddings.model),
                standby=True,
                breaker=CircuitBreaker.from_settings(settings.breaker),
            )
        )
        aliases.setdefault(local_embeddings.ALIAS, embeddings.model)
    router = Router(upstreams, aliases=aliases, fallbacks=settings.fallbacks)
    return UpstreamClient(router, settings.retry, settings.timeouts, tracer=tracing.tracer if tracing else None)


def build_counter(settings: Settings) -> TokenCounter:
    """The token counter; with the local model running, its own vocabulary counts for it."""
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(settings.data_dir / "tiktoken"))
    local = settings.local
    if not local.base_url:
        return TokenCounter(settings.tokens)
    path = local.gguf_path or model_file(local, settings.data_dir)[0]
    return TokenCounter(settings.tokens, local_model_path=Path(path), local_model_name=local.served_name)


def build_limiter(settings: Settings) -> Limiter:
    """Redis when ``redis_url`` is set (exact across instances); else, with several workers, one table every
    worker of this server shares (``limits/shared.py``); else in process memory. Redis's fail-open fallback is
    the shared table or the process's memory by the same rule."""
    local: Limiter
    if settings.server.workers > 1 and settings.limits.enabled:
        local = SharedLimiter(settings.data_dir / SHARED_FILE)
    else:
        local = MemoryLimiter(max_keys=settings.limits.memory_max_keys)
    if settings.redis_url:
        return RedisLimiter.from_url(
            settings.redis_url,
            timeout=settings.redis_timeout,
            prefix=settings.limits.redis_prefix,
            fail_open=settings.limits.fail_open,
            fallback=local,
        )
    return local


def sample_state(services: Services) -> None:
    """The gauges that describe state, read when metrics are (not on every request)."""
    metrics = services.metrics
    for up in services.upstream.router.upstreams:
        metrics.set_circuit(up.name, up.breaker.state.value)
    metrics.sessions_active.set(services.sessions.active)
    writer = services.sessions.writer
    metrics.queue_depth.set(writer.depth)
    metrics.queue_drops.set(writer.drops)


async def purge_analytics(store: Store, settings: Settings) -> None:
    """Drop analytics rows past their retention, every ``analytics.purge_interval`` seconds (safe to run
    on every instance at once)."""
    a = settings.analytics
    while True:
        await asyncio.sleep(a.purge_interval)
        try:
            raw, rollups = await store.analytics.purge_expired(
                datetime.now(UTC), timedelta(hours=a.raw_retention_hours), timedelta(days=a.rollup_retention_days)
            )
        except Exception as exc:  # the next round tries again
            log.warning("analytics purge failed (%s)", type(exc).__name__)
            continue
        if raw or rollups:
            log.info("analytics purged", extra={"raw_rows": raw, "rollup_rows": rollups})


def outside_routes(settings: Settings) -> frozenset[str]:
    """Routes with a limit of their own that the pipeline does not check (``RouteLimits`` does)."""
    if not settings.limits.enabled:
        return frozenset()
    return frozenset(settings.limits.routes) - PIPELINE_PATHS


def build_cache(settings: Settings) -> ResponseCache | None:
    """The response cache: Redis when ``redis_url`` is set (shared), else in process memory."""
    c = settings.cache
    if not c.enabled:
        return None
    if settings.redis_url:
        return RedisCache.from_url(
            settings.redis_url,
            timeout=settings.redis_timeout,
            prefix=c.redis_prefix,
            ttl=c.ttl,
            max_entry_bytes=c.max_entry_bytes,
        )
    return MemoryCache(ttl=c.ttl, max_entries=c.max_entries, max_bytes=c.max_bytes, max_entry_bytes=c.max_entry_bytes)


def build_lexical(settings: Settings, engine: AsyncEngine) -> LexicalIndex:
    """Lexical search: BM25 over in-memory postings kept in step with the store (``rag.retrieval.lexical_postings``),
    the store's own ranker answering until they are ready (FTS5 on SQLite, ``ts_rank_cd`` on PostgreSQL); or
    that ranker alone."""
    r = settings.rag.retrieval
    postgres = engine.dialect.name == "postgresql"
    fallback: LexicalIndex = PgFullText(engine, r.lexical_max_df) if postgres else Fts5Search(engine, r.lexical_max_df)
    database = engine.url.database
    feed: ChunkFeed
    if not r.lexical_postings:
        return fallback
    if postgres:
        feed = PostgresFeed(engine)
    elif database and database != ":memory:":
        feed = SqliteFeed(Path(database))
    else:
        return fallback
    return PostingsSearch(feed, engine, fallback, settings.data_dir / "lexical", r.lexical_max_df)


def build_rag(settings: Settings, engine: AsyncEngine, metrics: Metrics) -> Rag:
    """RAG: its lexical index now; the dense index (Chroma) and the embedder opened by ``Rag`` when first
    needed, or in the background at start when documents exist."""
    return Rag(
        settings,
        engine,
        lexical=build_lexical(settings, engine),
        open_dense=functools.partial(DenseIndex.open, settings.rag.retrieval, settings.data_dir),
        make_embedder=functools.partial(build_embedder, settings.rag.embeddings),
        metrics=metrics,
    )


def build_services(
    settings: Settings,
    store: Store,
    writer: WriteBehind,
    metrics: Metrics,
    tracing: Tracing | None = None,
    personaliser: Personaliser | None = None,
) -> Services:
    rag = build_rag(settings, store.engine, metrics)  # cheap: the index and the embedder open when documents are in use
    client = build_upstream(settings, tracing, rag)
    catalog = ModelCatalog(client, settings.server.models_cache_ttl)
    sessions = SessionManager(store, writer, settings.sessions, settings.store)
    counter = build_counter(settings)
    windows = WindowResolver.from_settings(settings, catalog)
    fitter = ContextFitter(
        settings.context,
        counter,
        windows,
        Summariser(settings.context.summarizer, counter, client),
        sessions,
        metrics,
    )
    cache = build_cache(settings)
    tools = Tools(settings.tools, rag, counter.count)
    for defined in settings.assistants:  # the config file's assistants offer tools that exist
        unknown = [name for name in defined.tools if name not in tools.named]
        if unknown:
            raise ValueError(f"assistants: {defined.name!r} offers the tool {unknown[0]!r}, which is not defined")
    return Services(
        upstream=client,
        catalog=catalog,
        resolver=IdentityResolver(settings.identity),
        sessions=sessions,
        connections=Connections(settings.sessions.max_concurrent_per_user),
        counter=counter,
        admission=Admission(settings.limits, build_limiter(settings), metrics),
        fitter=fitter,
        metrics=metrics,
        recorder=RequestRecorder(writer if settings.analytics.enabled else None, metrics),
        answers=CachedAnswers(cache, settings.cache, metrics) if cache is not None else None,
        research_models=frozenset(settings.sessions.research_models),
        personaliser=personaliser,
        tasks=TaskRecogniser(settings.tasks),
        rag=rag,
        grounder=Grounder(rag, settings.grounding, counter, windows),
        tracing=tracing,
        tool_loop=ToolLoop(tools, settings.tools, fitter, counter, metrics, tracing),
    )


def reload_config(services: Services) -> None:
    """SIGHUP: read the configuration again and apply what applies while serving: the config file's
    assistants and the limit lines (``limits.*`` but the backend's). Everything else needs a restart.
    A file that does not load leaves everything as it was."""
    try:
        fresh = load_settings()
        if services.rag is not None:
            services.rag.assistants.reload(fresh.assistants)
    except Exception as exc:  # a missing file, invalid YAML or settings, a duplicate name: never the worker's end
        fields = [".".join(map(str, e["loc"])) for e in exc.errors()] if isinstance(exc, ValidationError) else []
        log.error(
            "configuration not reloaded: the running one stays",
            extra={"error": type(exc).__name__, "fields": fields or None, "pid": os.getpid()},
        )
        return
    services.admission.reload(fresh.limits)
    log.info(
        "configuration reloaded",
        extra={"assistants": len(fresh.assistants), "limits": "reloaded", "pid": os.getpid()},
    )


@contextlib.contextmanager
def reload_on_sighup(services: Services) -> Iterator[None]:
    """``reload_config`` on SIGHUP, in the process's main thread (not under an in-process test client)."""
    loop = asyncio.get_running_loop()
    installed = False
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, reload_config, services)
            installed = True
    try:
        yield
    finally:
        if installed:
            loop.remove_signal_handler(signal.SIGHUP)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # still ignored while shutting down


def cors_middleware(settings: Settings) -> list[Middleware]:
    """``server.cors``: Starlette's CORS middleware on every route, when origins are allowed (off by default).
    Preflight requests are answered there, without a key; every answer, errors too, carries the headers."""
    cors = settings.server.cors
    if not cors.allow_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=cors.allow_origins,
            allow_methods=cors.allow_methods,
            allow_headers=cors.allow_headers,
            expose_headers=cors.expose_headers,
            allow_credentials=cors.allow_credentials,
            max_age=cors.max_age,
        )
    ]


def create_app(settings: Settings | None = None, access_stream: BinaryIO | None = None) -> Starlette:
    """The gateway. ``access_stream`` receives the JSON access log instead of standard error (tests)."""
    settings = settings or load_settings()
    configure_logging(settings.log)
    admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
    admin_digest, new_key = bootstrap_admin_digest(settings.data_dir, admin_key)
    if new_key:
        print_new_admin_key(new_key, settings)
    access_log = (TracedAccessLog if settings.tracing.enabled else AccessLog)(settings.log, raw=access_stream)
    jwt = JWTVerifier(settings.identity.jwt)  # reads its key files now: a bad path fails at start
    credentials = Credentials(StaticKeys({admin_digest: ADMIN}))
    template = settings.sessions.system_prompt_template
    personaliser = Personaliser(template) if template else None  # a bad template fails at start, not per request
    metrics = Metrics(metrics_dir() if settings.metrics.enabled else None)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.started = time.monotonic()
        store = await Store.open(database_url(settings))
        writer = WriteBehind(
            store,
            max_size=settings.store.queue_max,
            batch_size=settings.store.batch_size,
            flush_interval=settings.store.flush_interval,
        )
        await writer.start()
        tracing = app.state.tracing = Tracing.start(settings.tracing)
        services = build_services(settings, store, writer, metrics, tracing, personaliser)
        app.state.services = services
        stored = StoredKeys(store, writer, ttl=settings.identity.key_cache_ttl)
        credentials.authenticators = (  # a JWT is recognised by its shape before any store lookup
            *credentials.authenticators,
            *([JWTSignIn(jwt, settings.identity.jwt.claims)] if jwt.enabled else []),
            stored,
        )
        await services.catalog.refresh(force=True)
        await asyncio.to_thread(services.counter.warm_up)  # tokenizers load now, not on a first request
        if services.rag is not None:
            await services.rag.start()  # with documents: the index opens and the embedder loads in the background
        if not any(u.remote for u in services.upstream.router.upstreams):
            log.warning("no upstream configured: every model is unknown until one is (see docs/configuration.md)")
        # Start-up objects live as long as the process: keep them out of every garbage collection.
        gc.collect()
        gc.freeze()
        # A request allocates a few hundred objects: at the default threshold (700) the collector ran every
        # few requests and took ~10% of a worker's CPU under load. Cyclic garbage is rare on the hot path.
        gc.set_threshold(GC_THRESHOLD, 50, 50)
        metrics.samplers.append(functools.partial(sample_state, services))
        flusher = asyncio.create_task(metrics.run_flusher()) if metrics.directory is not None else None
        purger = asyncio.create_task(purge_analytics(store, settings)) if settings.analytics.enabled else None
        try:
            with reload_on_sighup(services):
                yield
        finally:
            if purger is not None:
                purger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await purger
            if flusher is not None:
                flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await flusher
            metrics.samplers.clear()
            if services.rag is not None:
                await services.rag.close()  # an ingestion job in progress is queued again
            await services.upstream.close()
            await services.admission.close()
            if services.answers is not None:
                await services.answers.cache.close()
            await writer.close()  # drains: nothing accepted is lost on a clean shutdown
            await store.close()
            if tracing is not None:
                await tracing.close()  # exports the spans still queued
            access_log.flush()

    scrape = metrics_api.MetricsEndpoint(settings.metrics, credentials, metrics) if settings.metrics.enabled else None
    pages = web.WebPages(settings.web.content_security_policy) if settings.web.enabled else None
    app = GatewayApp(
        hot_paths=PIPELINE_PATHS | {chatkit_api.PATH},  # the fast lane (api/fastlane.py)
        routes=[
            Route(
                "/v1/chat/completions",
                openai.chat_completions(OpenAIDoor(settings.cache.stream_chunk_chars)),
                methods=["POST"],
            ),
            Route("/v1/embeddings", openai.embeddings, methods=["POST"]),
            Route("/v1/models", openai.list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", openai.get_model, methods=["GET"]),
            Route("/api/v1/chat", chat_api.chat, methods=["POST"]),
            Route(chatkit_api.PATH, Endpoint(chatkit_api.chatkit), methods=["POST"]),
            Route(chatkit_api.ATTACHMENT_PATH, chatkit_api.attachment, methods=["GET", "PUT", "POST"]),
            Route("/api/v1/chat/sessions", chat_api.list_sessions, methods=["GET"]),
            Route("/api/v1/chat/sessions/stats", chat_api.session_stats, methods=["GET"]),
            Route("/api/v1/chat/sessions/{session_id}", chat_api.get_session, methods=["GET"]),
            Route("/api/v1/chat/sessions/{session_id}", chat_api.delete_session, methods=["DELETE"]),
            Route("/api/v1/collections", rag.create_collection, methods=["POST"]),
            Route("/api/v1/collections", rag.list_collections, methods=["GET"]),
            Route("/api/v1/collections/{collection_id}", rag.get_collection, methods=["GET"]),
            Route("/api/v1/collections/{collection_id}", rag.delete_collection, methods=["DELETE"]),
            Route("/api/v1/collections/{collection_id}/documents", rag.upload, methods=["POST"]),
            Route("/api/v1/collections/{collection_id}/documents", rag.list_documents, methods=["GET"]),
            Route(
                "/api/v1/collections/{collection_id}/documents/{document_id}", rag.delete_document, methods=["DELETE"]
            ),
            Route("/api/v1/collections/{collection_id}/search", rag.search, methods=["POST"]),
            Route("/api/v1/jobs/{job_id}", rag.get_job, methods=["GET"]),
            Route("/admin/assistants", assistants.list_assistants, methods=["GET"]),
            Route("/admin/assistants", assistants.create_assistant, methods=["POST"]),
            Route("/admin/assistants/{name}", assistants.get_assistant, methods=["GET"]),
            Route("/admin/assistants/{name}", assistants.replace_assistant, methods=["PUT"]),
            Route("/admin/assistants/{name}", assistants.delete_assistant, methods=["DELETE"]),
            Route("/admin/users", admin.list_users, methods=["GET"]),
            Route("/admin/users/{user_id:path}/limits", admin.get_user_limits, methods=["GET"]),
            Route("/admin/users/{user_id:path}/limits/reset", admin.reset_user_limits, methods=["POST"]),
            Route("/admin/users/{user_id:path}", admin.get_user, methods=["GET"]),
            Route("/admin/connections", admin.connections, methods=["GET"]),
            Route("/admin/metrics", admin.snapshot, methods=["GET"]),
            Route("/admin/collections", admin.list_collections, methods=["GET"]),
            Route("/admin/jobs", admin.list_jobs, methods=["GET"]),
            Route("/admin/cache/stats", admin.cache_stats, methods=["GET"]),
            Route("/admin/cache", admin.cache_clear, methods=["DELETE"]),
            Route("/admin/analytics/global", admin.analytics_global, methods=["GET"]),
            Route("/admin/analytics/users/{user_id:path}", admin.analytics_user, methods=["GET"]),
            Route("/admin/analytics/chats/{chat_id}", admin.analytics_chat, methods=["GET"]),
            Route("/admin/analytics/export", admin.analytics_export, methods=["GET"]),
            *([Route(metrics_api.PATH, scrape)] if scrape is not None else []),  # every method: it says 405
            Route("/health", health.health, methods=["GET"]),
            Route("/ready", health.ready, methods=["GET"]),
            *docs.routes(
                credentials,
                [*settings.server.public_paths, chatkit_api.ATTACHMENT_PREFIX],  # the upload URL's token is its key
                tool_names=tool_names(settings.tools),
            ),
            *(pages.routes() if pages is not None else []),
        ],
        middleware=[
            *([Middleware(TraceRequests)] if settings.tracing.enabled else []),  # outermost: logs inside its span
            Middleware(RequestLog, access_log=access_log, metrics=metrics),
            *cors_middleware(settings),  # before authentication: a preflight carries no key
            Middleware(
                BodyLimit,
                max_bytes=settings.server.max_body_bytes,
                routes=[rag.upload_body_limit(settings), *chatkit_api.attachment_body_limits(settings)],
            ),
            *([Middleware(web.CookieSignIn, cookie=cookie)] if (cookie := settings.web.jwt_cookie) else []),
            Middleware(
                Authenticate,
                authenticator=credentials,
                # /metrics checks its own credentials (a scraper's token is not an API key); the docs page asks
                public_paths=[
                    *settings.server.public_paths,
                    metrics_api.PATH,
                    chatkit_api.ATTACHMENT_PREFIX,
                    *docs.PUBLIC_PATHS,
                    *(web.PUBLIC_PATHS if pages is not None else ()),
                ],
                anonymous_paths=ANONYMOUS_PATHS if settings.identity.allow_anonymous else frozenset(),
            ),
            *(  # only when a route outside the pipeline is listed: no extra layer otherwise
                [Middleware(RouteLimits, routes=route_limited)] if (route_limited := outside_routes(settings)) else []
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.access_log = access_log
    app.state.tracing = None  # the lifespan starts it when enabled
    app.state.chatkit = None  # the ChatKit door's service, made on its first request (api/chatkit.py)
    app.state.chatkit_lock = asyncio.Lock()
    app.state.started = time.monotonic()
    return app


def print_new_admin_key(key: str, settings: Settings) -> None:
    """Shown once, on the terminal only (never to the logs): only its digest is kept."""
    print(
        f"\nchatgate: generated the bootstrap admin key (shown once; its SHA-256 is in "
        f"{settings.data_dir / 'admin_key.sha256'}):\n\n    {key}\n",
        flush=True,
    )


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` and for ``chatgate serve`` workers."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the lifespan reloads on it: never a dead worker
    return create_app(load_settings())
