"""Custom server tools for the tool-loop tests (``tools.custom``), imported by the gateway under test."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

_ARRIVED: defaultdict[tuple[str, str], asyncio.Event] = defaultdict(asyncio.Event)


async def meet(arguments: dict[str, Any]) -> str:
    """Says it is here, then waits for the other side (``other``) to say so: two calls meet only when they
    run at the same time (in turn, the first waits for the second until the tool timeout cuts it off)."""
    key, me, other = str(arguments["key"]), str(arguments["me"]), str(arguments["other"])
    _ARRIVED[(key, me)].set()
    await _ARRIVED[(key, other)].wait()
    return f"{me} met {other}"


def broken(arguments: dict[str, Any]) -> str:
    raise RuntimeError("broken on purpose")


async def slow(arguments: dict[str, Any]) -> str:
    await asyncio.sleep(60)
    return "too late"


def _note(line: str) -> None:
    with Path(os.environ["CHATGATE_TEST_TOOL_LOG"]).open("a") as f:
        f.write(line + "\n")


async def hang(arguments: dict[str, Any]) -> str:
    """Runs until cancelled, noting both in ``$CHATGATE_TEST_TOOL_LOG``."""
    _note(f"started {arguments.get('tag')}")
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        _note(f"cancelled {arguments.get('tag')}")
        raise
    return "never"


def whoami(arguments: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": caller["user_id"], "assistant": caller["assistant"]}
