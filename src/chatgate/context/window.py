"""A model's context window and a request's completion budget.

The window, first source that knows:

1. ``context.windows`` (by the public name, then the served name). The bundled local model's
   served name maps to ``local.n_ctx`` unless listed there;
2. the upstream's ``GET /models`` object (``max_model_len`` from vLLM, or ``context_length``,
   ``context_window``, ``n_ctx``), see :meth:`ModelCatalog.window_of`;
3. the request's ``metadata.model.max_model_len`` (Open WebUI passes its model's info);
4. ``context.default_window``; None when that is unset too (the request is sent unfitted).

The completion budget: the request's ``max_completion_tokens`` or ``max_tokens``; else the
``max_tokens`` the upstream adds to requests that set none (``chat_defaults``, e.g. the local
model's ``local.default_max_tokens``); else ``context.reserve_completion_tokens``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chatgate.settings import ContextSettings, Settings
from chatgate.upstream.catalog import ModelCatalog


def _positive(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def requested_max_tokens(payload: Mapping[str, Any]) -> int | None:
    """The completion limit a chat request sets: ``max_completion_tokens``, else ``max_tokens``."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def local_windows(settings: Settings) -> dict[str, int]:
    """The bundled local model's window (``local.n_ctx``) under its served name, when it is in use."""
    if settings.local.base_url or settings.wants_local_model():
        return {settings.local.served_name: settings.local.n_ctx}
    return {}


class WindowResolver:
    def __init__(
        self, settings: ContextSettings, catalog: ModelCatalog | None = None, extra: Mapping[str, int] | None = None
    ) -> None:
        """``extra``: windows known from elsewhere (:func:`local_windows`); ``context.windows`` wins over them."""
        self.settings = settings
        self.catalog = catalog
        self.windows = {**(extra or {}), **settings.windows}

    @classmethod
    def from_settings(cls, settings: Settings, catalog: ModelCatalog | None) -> WindowResolver:
        return cls(settings.context, catalog, local_windows(settings))

    def served(self, model: str) -> str:
        """The served model name behind ``model`` (aliases followed)."""
        return self.catalog.router.resolve(model) if self.catalog is not None else model

    async def window(self, model: str, model_info: Mapping[str, Any] | None = None) -> tuple[int | None, str]:
        """The window of ``model`` and where it came from: settings, upstream, metadata, default or unknown."""
        served = self.served(model)
        for name in (model, served):
            if name in self.windows:
                return self.windows[name], "settings"
        if self.catalog is not None:
            found = await self.catalog.window_of(model)
            if found is not None:
                return found, "upstream"
        if model_info is not None and (found := _positive(model_info.get("max_model_len"))) is not None:
            return found, "metadata"
        if self.settings.default_window is not None:
            return self.settings.default_window, "default"
        return None, "unknown"

    def default_completion(self, model: str) -> int:
        """Completion tokens to keep free when the request sets no limit (see the module docstring)."""
        if self.catalog is not None:
            router = self.catalog.router
            limits = [
                limit
                for up in router.served_models().get(router.resolve(model), [])
                if (limit := _positive(up.chat_defaults.get("max_tokens"))) is not None
            ]
            if limits:
                return max(limits)
        return self.settings.reserve_completion_tokens
