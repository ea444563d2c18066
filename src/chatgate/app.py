"""Builds the ASGI app: settings -> services -> routes. No logic of its own."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.middleware import Middleware

from chatgate import __version__
from chatgate.api import errors, health, openai
from chatgate.api.middleware import ApiKeyAuth, BodyLimit, RequestLog
from chatgate.api.protocol import ChatCompletionRequest, EmbeddingRequest
from chatgate.identity.keys import ADMIN, StaticKeys, bootstrap_admin_digest
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


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log)
    admin_digest, new_key = bootstrap_admin_digest(settings.data_dir, _secret(settings.admin_key))
    if new_key:
        print_new_admin_key(new_key, settings)
    services = build_services(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.started = time.monotonic()
        await services.catalog.refresh(force=True)
        if not services.upstream.router.upstreams:
            log.warning("no upstream configured: every model is unknown until one is (see docs/configuration.md)")
        try:
            yield
        finally:
            await services.upstream.close()

    app = FastAPI(
        title="chatgate",
        version=__version__,
        description="A self-hosted, OpenAI-compatible chat gateway.",
        lifespan=lifespan,
        middleware=[
            Middleware(RequestLog),
            Middleware(BodyLimit, max_bytes=settings.server.max_body_bytes),
            Middleware(
                ApiKeyAuth, authenticator=StaticKeys({admin_digest: ADMIN}), public_paths=settings.server.public_paths
            ),
        ],
    )
    app.state.settings = settings
    app.state.services = services
    app.state.started = time.monotonic()
    errors.install(app)
    app.include_router(health.router)
    app.include_router(openai.router)
    _document_bodies(app, [ChatCompletionRequest, EmbeddingRequest])
    return app


def print_new_admin_key(key: str, settings: Settings) -> None:
    """Shown once, on the terminal only (never to the logs): only its digest is kept."""
    print(
        f"\nchatgate: generated the bootstrap admin key (shown once; its SHA-256 is in "
        f"{settings.data_dir / 'admin_key.sha256'}):\n\n    {key}\n",
        flush=True,
    )


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def _document_bodies(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Add the schemas of bodies the routes read themselves to the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and for ``chatgate serve`` workers."""
    return create_app(load_settings())
