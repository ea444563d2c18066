"""Builds the ASGI app: settings -> services -> routes. No logic of its own."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import BinaryIO

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from chatgate.api import docs, health, openai
from chatgate.api.errors import EXCEPTION_HANDLERS
from chatgate.api.middleware import ApiKeyAuth, BodyLimit, RequestLog
from chatgate.identity.keys import ADMIN, StaticKeys, bootstrap_admin_digest
from chatgate.observe.logging import AccessLog
from chatgate.observe.logging import configure as configure_logging
from chatgate.pipeline import Services
from chatgate.settings import Settings, load_settings
from chatgate.upstream.breaker import CircuitBreaker
from chatgate.upstream.catalog import ModelCatalog
from chatgate.upstream.client import UpstreamClient
from chatgate.upstream.routing import Router, Upstream

log = logging.getLogger("chatgate")


def build_services(settings: Settings) -> Services:
    upstreams = [
        Upstream(
            name=u.name,
            base_url=u.base_url,
            api_key=u.api_key.get_secret_value() if u.api_key else None,
            weight=u.weight,
            timeout=u.timeout,
            max_retries=u.max_retries,
            configured_models=tuple(u.models),
            chat_defaults=dict(u.chat_defaults),
            breaker=CircuitBreaker(settings.breaker.failure_threshold, settings.breaker.reset_timeout),
        )
        for u in settings.all_upstreams()
    ]
    router = Router(upstreams, aliases=settings.all_aliases(), fallbacks=settings.fallbacks)
    client = UpstreamClient(router, settings.retry, settings.timeouts)
    return Services(upstream=client, catalog=ModelCatalog(client, settings.server.models_cache_ttl))


def create_app(settings: Settings | None = None, access_stream: BinaryIO | None = None) -> Starlette:
    """The gateway. ``access_stream`` receives the JSON access log instead of standard error (tests)."""
    settings = settings or load_settings()
    configure_logging(settings.log)
    admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
    admin_digest, new_key = bootstrap_admin_digest(settings.data_dir, admin_key)
    if new_key:
        print_new_admin_key(new_key, settings)
    services = build_services(settings)
    access_log = AccessLog(settings.log, raw=access_stream)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.started = time.monotonic()
        await services.catalog.refresh(force=True)
        if not services.upstream.router.upstreams:
            log.warning("no upstream configured: every model is unknown until one is (see docs/configuration.md)")
        # Start-up objects live as long as the process: keep them out of every garbage collection.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await services.upstream.close()
            access_log.flush()

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", openai.chat_completions(services), methods=["POST"]),
            Route("/v1/embeddings", openai.embeddings(services), methods=["POST"]),
            Route("/v1/models", openai.list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", openai.get_model, methods=["GET"]),
            Route("/health", health.health, methods=["GET"]),
            Route("/ready", health.ready, methods=["GET"]),
            *docs.routes(),
        ],
        middleware=[
            Middleware(RequestLog, access_log=access_log),
            Middleware(BodyLimit, max_bytes=settings.server.max_body_bytes),
            Middleware(
                ApiKeyAuth,
                authenticator=StaticKeys({admin_digest: ADMIN}),
                public_paths=settings.server.public_paths,
            ),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.services = services
    app.state.access_log = access_log
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
    return create_app(load_settings())
