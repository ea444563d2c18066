"""``GET /metrics``: Prometheus text, for an admin key, the metrics token, or an allowed network.

The route authenticates for itself (``Authenticate`` lets it through), because a scraper's token is
not an API key. A valid key without the admin scope gets the unknown-route 404, as the admin routes do.
"""

from __future__ import annotations

import hmac
import ipaddress

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from chatgate.api.errors import error_response
from chatgate.api.responses import no_route
from chatgate.errors import ChatgateError, MethodNotAllowed, Unauthorized
from chatgate.identity.keys import Authenticator
from chatgate.observe.metrics import CONTENT_TYPE, Metrics
from chatgate.settings import MetricsSettings

PATH = "/metrics"


class MetricsEndpoint:
    def __init__(self, settings: MetricsSettings, credentials: Authenticator, metrics: Metrics) -> None:
        self.metrics = metrics
        self.token = settings.token.get_secret_value().encode() if settings.token else None
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in settings.allow)
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """An ASGI app, so that every method comes here (see ``handle``)."""
        try:
            response = await self.handle(Request(scope, receive))
        except ChatgateError as exc:
            response = error_response(exc)
        await response(scope, receive, send)

    async def handle(self, request: Request) -> Response:
        """Who may scrape is known first (anyone else: 401 or the unknown-route 404), then a method other
        than GET is a 405."""
        await self._check(request)
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"{request.method} is not allowed on {PATH}.", headers={"Allow": "GET"})
        return Response(self.metrics.exposition(), media_type=CONTENT_TYPE)

    async def _check(self, request: Request) -> None:
        client = request.client
        if self.networks and client is not None:
            try:
                address = ipaddress.ip_address(client.host)
            except ValueError:
                address = None
            if address is not None and any(address in net for net in self.networks):
                return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        key = given.strip() if scheme.lower() == "bearer" else request.headers.get("x-api-key", "").strip()
        if not key:
            raise Unauthorized("Missing credentials: an admin key or the metrics token.")
        if self.token is not None and hmac.compare_digest(key.encode(), self.token):
            return
        principal = await self.credentials.authenticate(key)
        if principal is None:
            raise Unauthorized("Invalid API key.")
        if "admin" not in principal.scopes:
            raise no_route(request)
