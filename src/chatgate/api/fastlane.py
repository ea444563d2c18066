"""The application object: Starlette, with a fast lane for the hot routes.

A chat completion, an embeddings request or a chat-API message goes through the same middleware as
every other request (request log, body limit, authentication, ...) and then straight to its endpoint:
not through Starlette's error and exception layers and its router, which cost a few frames and a
route scan per request and add nothing there (those endpoints answer their own errors, and the
request log answers anything unhandled with a 500). Every other request, and a hot path with another
method (405), takes Starlette's usual way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send


async def _endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    await scope["route"].app(scope, receive, send)


class GatewayApp(Starlette):
    def __init__(self, *, hot_paths: Iterable[str], routes: list[BaseRoute], **kwargs: Any) -> None:
        super().__init__(routes=routes, **kwargs)
        wanted = set(hot_paths)
        self.hot: dict[tuple[str, str], Route] = {
            (route.path, method): route
            for route in routes
            if isinstance(route, Route) and route.path in wanted
            for method in route.methods or ()
        }
        self._lane: ASGIApp | None = None

    def _build_lane(self) -> ASGIApp:
        lane: ASGIApp = _endpoint
        for cls, args, kwargs in reversed(self.user_middleware):
            lane = cls(lane, *args, **kwargs)
        return lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (route := self.hot.get((scope["path"], scope["method"]))) is not None:
            scope["app"] = self
            scope["route"] = route
            scope["path_params"] = {}
            if self._lane is None:
                self._lane = self._build_lane()
            await self._lane(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
