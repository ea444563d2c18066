"""A deterministic OpenAI-compatible upstream for tests, with knobs for faults.

Run: ``python tests/fake_upstream.py --port 9001 --name a --models fake-model,fake-other``.

Knobs come in the request body under ``"fake"`` (unknown fields pass through chatgate, so
tests set them on the client request):

- ``id``: key for per-scenario counters (``GET /_stats/<id>``; ``traceparents``: the W3C
  ``traceparent`` headers received, when chatgate sent any).
- ``fail``: statuses for the first attempts, e.g. ``[500, 429]``; later attempts succeed.
- ``retry_after``: ``Retry-After`` value sent with those failures.
- ``reset``: this many first attempts get their connection dropped with no answer.
- ``truncate``: this many first attempts get headers and half a body, then the connection drops.
- ``delay``: seconds before the response headers (slow first byte).
- ``chunk_delay``: seconds between stream chunks.
- ``abort_after``: streams are cut (connection dropped) after this many chunks.
- ``hang``: never answer (until the client goes away; counted as ``cancelled``).
- ``style``: ``multiline`` (JSON split over several ``data:`` lines), ``crlf``, ``keepalive``.
- ``no_done``: end the stream without ``data: [DONE]``.
- ``no_usage``: a stream carries no usage chunk, whatever ``stream_options`` asks (as llama.cpp's server).
- ``answer``: the answer's text, instead of the echo.
- ``words``: the answer is this many words (``w1 w2 ...``), whatever ``max_tokens`` says: an upstream that
  ignores it. Streamed one word a chunk like any answer; usage counts them.
- ``script``: a tool loop's answers, one per step (tool calls, then content; see ``_scripted``).

Knobs can also ride in the last user message, for doors that send the upstream only messages (the chat
API, the web page): ``[fake:{"id": "x", "chunk_delay": 0.2}]`` anywhere in it is read as JSON knobs and
removed from the text that is echoed. ``--answers FILE`` (JSON: question -> knobs) gives the knobs of a
last user message that is exactly one of its questions (e.g. ``{"answer": "..."}``).
- ``abort_attempts``: ``abort_after`` applies to this many first attempts only (default: all).
- ``stream_error``: this many first attempts of a stream answer 200, then an error event
  (``data: {"error": {..., "code": stream_error_code}}``, default 500) as their first event, and end.
- ``on``: the fakes (by ``--name``) these fault knobs apply to; the others answer normally.

The answer is ``"echo: <last user text>"``; usage counts words. With ``tools``, the answer
calls the first tool. ``/v1/embeddings`` gives the model ``fake-word-hash`` hashed bag-of-words
vectors (texts sharing words are close); any other model a digest. An embeddings request with an input
containing ``[fake:slow-embed]`` waits 0.5 s (a slow ingestion, to interrupt it).

A summariser call (chatgate's ``context/summarize.py``: the last user message holds ``<brief>``
and ``<turns>``) gets a deterministic brief instead: the old brief's lines, then ``- `` and the
first few words of each new transcript line. In the turns, ``[fake:fail]`` answers 500,
``[fake:slow]`` waits 10 s, ``[fake:empty]`` answers an empty brief. Counted under
``GET /_stats/summarizer`` (its ``bodies`` are the summariser's user messages, ``models`` the models asked).

``--openwebui`` plays a model behind Open WebUI: its task prompts (a user message starting ``### Task:``)
get the JSON it parses (a title, tags, follow-ups, queries, an autocompletion), offered tools are never called
(Open WebUI offers its built-in ones on every web-page request), and every chat request's body is kept under
``GET /_stats/openwebui`` (``bodies``; ``tasks``: the task answers given, by kind).

``--max-model-len N`` adds vLLM's ``max_model_len`` to every ``/v1/models`` object and, like
vLLM, answers 400 to a chat request whose prompt (counted in words, fewer than tokens) plus
``max_tokens`` exceeds it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import time
from collections import defaultdict
from typing import Any

from aiohttp import web

STATS: dict[str, dict[str, Any]] = defaultdict(lambda: {"attempts": 0, "cancelled": 0, "completed": 0, "bodies": []})


def _last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content)
    return ""


def _usage(body: dict[str, Any], text: str) -> dict[str, int]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    completion = len(text.split())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _knobs(request: web.Request, body: dict[str, Any]) -> dict[str, Any]:
    """The fault knobs that apply to this fake (``on`` names the fakes they are meant for)."""
    knobs: dict[str, Any] = body.get("fake") or {}
    if "on" in knobs and request.app["name"] not in knobs["on"]:
        return {"id": knobs["id"]} if "id" in knobs else {}
    return knobs


async def _faults(request: web.Request, body: dict[str, Any]) -> web.StreamResponse | None:
    knobs = _knobs(request, body)
    stats = STATS[knobs.get("id", "default")]
    attempt = stats["attempts"]
    stats["attempts"] += 1
    stats["bodies"].append(body)
    if "traceparent" in request.headers:  # chatgate's tracing is on: the trace context it propagated
        stats.setdefault("traceparents", []).append(request.headers["traceparent"])
    if attempt < int(knobs.get("reset", 0)):
        assert request.transport is not None
        request.transport.abort()
        raise asyncio.CancelledError
    fail = knobs.get("fail") or []
    if attempt < len(fail):
        status = int(fail[attempt])
        headers = {"Retry-After": str(knobs["retry_after"])} if "retry_after" in knobs else {}
        return web.json_response(
            {"error": {"message": f"fake failure {status}", "type": "fake_error"}}, status=status, headers=headers
        )
    if knobs.get("hang"):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stats["cancelled"] += 1
            raise
    if knobs.get("delay"):
        try:
            await asyncio.sleep(float(knobs["delay"]))
        except asyncio.CancelledError:
            stats["cancelled"] += 1
            raise
    return None


BRIEF_WORDS = 6


async def _summary(body: dict[str, Any], text: str) -> web.Response:
    stats = STATS["summarizer"]
    stats["attempts"] += 1
    stats["bodies"].append(text)
    stats.setdefault("models", []).append(body.get("model"))
    old = text.split("<brief>", 1)[1].split("</brief>", 1)[0].strip()
    turns = text.split("<turns>", 1)[1].split("</turns>", 1)[0].strip()
    if "[fake:fail]" in turns:
        return web.json_response({"error": {"message": "fake summariser failure", "type": "fake_error"}}, status=500)
    if "[fake:slow]" in turns:
        await asyncio.sleep(10)
    lines = [] if old == "(none yet)" else old.splitlines()
    lines += ["- " + " ".join(line.split()[:BRIEF_WORDS]) for line in turns.splitlines() if line.strip()]
    brief = "" if "[fake:empty]" in turns else "\n".join(lines)
    stats["completed"] += 1
    return web.json_response(
        {
            "id": "chatcmpl-fake-brief",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": brief},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": _usage(body, brief),
        }
    )


MESSAGE_KNOBS = "[fake:"


def _message_knobs(request: web.Request, body: dict[str, Any]) -> str:
    """Knobs from the last user message (``[fake:{...}]``, any JSON object) and from ``--answers`` merged into
    ``body["fake"]``; the message's text without them."""
    text = _last_user_text(body)
    knobs: dict[str, Any] = {}
    decoder = json.JSONDecoder()
    start = text.find(MESSAGE_KNOBS)
    while start != -1:
        try:
            found, end = decoder.raw_decode(text, start + len(MESSAGE_KNOBS))
        except json.JSONDecodeError:
            found, end = None, -1
        if isinstance(found, dict) and text.startswith("]", end):
            knobs.update(found)
            text = text[:start] + text[end + 1 :]
            start = text.find(MESSAGE_KNOBS, start)
        else:
            start = text.find(MESSAGE_KNOBS, start + 1)
    text = text.strip() if knobs else text
    knobs.update(request.app["answers"].get(text, {}))
    if knobs:
        body["fake"] = {**(body.get("fake") or {}), **knobs}
    return text


OPENWEBUI_ANSWERS = (  # the JSON key its template asks for -> (task, the answer Open WebUI parses)
    ('"follow_ups"', "follow_ups", {"follow_ups": ["Tell me more", "Give an example"]}),
    ('"tags"', "tags", {"tags": ["General", "Testing"]}),
    ('"title"', "title", {"title": "Fake Title"}),
    ('"queries"', "queries", {"queries": []}),
    ('"text"', "autocomplete", {"text": " more"}),
)


def _openwebui_task(text: str) -> str | None:
    """The answer to one of Open WebUI's task prompts, or None for a chat message."""
    if not text.startswith("### Task:"):
        return None
    head = text.split("<chat_history>", 1)[0]  # the template's own text, not the chat inside it
    for key, task, answer in OPENWEBUI_ANSWERS:
        if key in head:
            tasks = STATS["openwebui"].setdefault("tasks", {})
            tasks[task] = tasks.get(task, 0) + 1
            return json.dumps(answer)
    return None


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not isinstance(body.get("messages"), list):
        return web.json_response(
            {"error": {"message": "messages is required", "type": "invalid_request_error"}}, status=400
        )
    asked = _message_knobs(request, body)
    last = _last_user_text(body)
    if "<brief>" in last and "<turns>" in last and not body.get("stream"):
        return await _summary(body, last)
    limit = request.app["max_model_len"]
    if limit:
        needed = _usage(body, "")["prompt_tokens"] + int(body.get("max_tokens") or 0)
        if needed > limit:
            message = f"This model's maximum context length is {limit} tokens. However, you requested {needed}."
            return web.json_response(
                {"object": "error", "message": message, "type": "BadRequestError", "code": 400}, status=400
            )
    faulted = await _faults(request, body)
    if faulted is not None:
        return faulted
    knobs = _knobs(request, body)
    name = request.app["name"]
    text = str(knobs["answer"]) if "answer" in knobs else "echo: " + asked
    if "words" in knobs:
        text = " ".join(f"w{i}" for i in range(1, int(knobs["words"]) + 1))
    openwebui = request.app["openwebui"]
    if openwebui:
        STATS["openwebui"]["attempts"] += 1
        STATS["openwebui"]["bodies"].append(body)
        text = _openwebui_task(_last_user_text(body)) or text
    created = int(time.time())
    base = {"id": "chatcmpl-fake", "created": created, "model": body.get("model"), "system_fingerprint": name}
    tool_calls = None
    if "script" in knobs:
        scripted = await _scripted(request, body, knobs)
        if isinstance(scripted, web.StreamResponse):
            return scripted
        text, tool_calls = scripted
    elif body.get("tools") and not openwebui:
        fn = body["tools"][0]["function"]["name"]
        tool_calls = [{"id": "call_1", "type": "function", "function": {"name": fn, "arguments": '{"x": 1}'}}]
    if STATS[knobs.get("id", "default")]["attempts"] <= int(knobs.get("truncate", 0)):
        resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
        await resp.prepare(request)
        await resp.write(b'{"id": "chatcmpl-fake", "choi')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return resp
    if not body.get("stream"):
        scripted_text = "script" in knobs and text  # a scripted step may write before its calls
        message: dict[str, Any] = {"role": "assistant", "content": text if scripted_text or not tool_calls else None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        STATS[knobs.get("id", "default")]["completed"] += 1
        return web.json_response(
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if tool_calls else "stop",
                        "logprobs": None,
                    }
                ],
                "usage": _usage(body, text),
            }
        )
    return await _stream(request, body, base, text, tool_calls)


def _this_turn(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages after the last user message: the tool loop's steps so far."""
    messages = body.get("messages") or []
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    return messages[last + 1 :]


async def _scripted(
    request: web.Request, body: dict[str, Any], knobs: dict[str, Any]
) -> tuple[str, list[dict[str, Any]] | None] | web.StreamResponse:
    """The ``script`` knob's answer for this step of a tool loop: step n (from 0) is the number of assistant
    messages after the last user message; past the script's end its last entry again. An entry is
    ``{"call": [{"name", "arguments"}], "content"}`` (tool calls), ``{"answer": text}`` (``{results}`` in it:
    the tool results it was given, joined by `` | ``), ``{"status": 500}`` or ``{"hang": true}``. Asked with
    ``tool_choice: none``, it answers (the entry's ``answer``, else ``done after N steps``)."""
    turn = _this_turn(body)
    script = knobs["script"]
    n = sum(1 for m in turn if m.get("role") == "assistant")
    entry = script[min(n, len(script) - 1)]
    results = " | ".join(str(m.get("content")) for m in turn if m.get("role") == "tool")
    if "status" in entry:
        status = int(entry["status"])
        return web.json_response({"error": {"message": f"fake failure {status}", "type": "fake_error"}}, status=status)
    if entry.get("hang"):
        stats = STATS[knobs.get("id", "default")]
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            stats["cancelled"] += 1
            raise
    if "call" in entry and body.get("tool_choice") != "none":
        calls = [
            {
                "id": f"call_{n}_{j}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c.get("arguments", {}))},
            }
            for j, c in enumerate(entry["call"])
        ]
        return entry.get("content") or "", calls
    answer = str(entry.get("answer", f"done after {n} steps"))
    return answer.replace("{results}", results), None


async def _stream(
    request: web.Request, body: dict[str, Any], base: dict[str, Any], text: str, tool_calls: list[dict[str, Any]] | None
) -> web.StreamResponse:
    knobs = _knobs(request, body)
    stats = STATS[knobs.get("id", "default")]
    style = knobs.get("style")
    nl = b"\r\n" if style == "crlf" else b"\n"
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    attempt = stats["attempts"]  # this attempt's number, from 1
    if attempt <= int(knobs.get("stream_error", 0)):
        error = {"message": "fake error event", "type": "fake_error", "code": int(knobs.get("stream_error_code", 500))}
        await resp.write(b"data: " + json.dumps({"error": error}).encode() + nl + nl)
        await resp.write_eof()
        return resp
    aborts = "abort_after" in knobs and attempt <= int(knobs.get("abort_attempts", attempt))

    def event(obj: Any) -> bytes:
        data = json.dumps(obj, indent=1 if style == "multiline" else None).encode()
        lines = data.split(b"\n")
        return b"".join(b"data: " + line + nl for line in lines) + nl

    chunks = [
        {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    ]
    if tool_calls:
        if text and "script" in knobs:  # content before the calls, as some models write
            chunks.append(
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
                }
            )
        for i, call in enumerate(tool_calls):  # each call's head, then its arguments in two pieces
            args = call["function"]["arguments"]
            half = len(args) // 2
            head = {"index": i, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"]}}
            for delta in (
                {**head, "function": {**head["function"], "arguments": args[:half]}},
                {"index": i, "function": {"arguments": args[half:]}},
            ):
                chunks.append(
                    {
                        **base,
                        "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None}],
                    }
                )
    else:
        for word in text.split(" "):
            chunks.append(
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
                }
            )
    chunks.append(
        {
            **base,
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        }
    )
    if (body.get("stream_options") or {}).get("include_usage") and not knobs.get("no_usage"):
        chunks.append({**base, "object": "chat.completion.chunk", "choices": [], "usage": _usage(body, text)})
    try:
        for i, chunk in enumerate(chunks):
            if aborts and i >= int(knobs["abort_after"]):
                await asyncio.sleep(0.05)  # let what was written reach the client first
                assert request.transport is not None
                request.transport.abort()
                return resp
            if style == "keepalive":
                await resp.write(b": keep-alive" + nl + nl)
            await resp.write(event(chunk))
            if knobs.get("chunk_delay"):
                await asyncio.sleep(float(knobs["chunk_delay"]))
        if not knobs.get("no_done"):
            await resp.write(b"data: [DONE]" + nl + nl)
        await resp.write_eof()
        stats["completed"] += 1
    except (asyncio.CancelledError, ConnectionResetError):
        stats["cancelled"] += 1
        raise
    return resp


WORD_HASH_MODEL = "fake-word-hash"  # embeddings that put texts sharing words close together (RAG tests)
WORD_HASH_DIM = 64


def _word_hash(text: str) -> list[float]:
    """A hashed bag of words, L2-normalised (as tests/rag/doubles.py's HashEmbedder)."""
    v = [0.0] * WORD_HASH_DIM
    for word in re.findall(r"\w+", text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        v[h % WORD_HASH_DIM] += 1.0 if (h >> 32) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v] if norm else [1.0 / math.sqrt(WORD_HASH_DIM)] * WORD_HASH_DIM


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    faulted = await _faults(request, body)
    if faulted is not None:
        return faulted
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    if any("[fake:slow-embed]" in str(text) for text in inputs):
        await asyncio.sleep(0.5)
    data = []
    for i, text in enumerate(inputs):
        if body.get("model") == WORD_HASH_MODEL:
            data.append({"object": "embedding", "index": i, "embedding": _word_hash(str(text))})
            continue
        digest = hashlib.sha256(str(text).encode()).digest()
        data.append({"object": "embedding", "index": i, "embedding": [b / 255 for b in digest[:8]]})
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
        }
    )


async def models(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "object": "list",
            "data": [
                {
                    "id": m,
                    "object": "model",
                    "created": 1700000000,
                    "owned_by": request.app["name"],
                    **({"max_model_len": request.app["max_model_len"]} if request.app["max_model_len"] else {}),
                }
                for m in request.app["models"]
            ],
        }
    )


async def stats(request: web.Request) -> web.Response:
    return web.json_response(STATS[request.match_info["id"]])


def make_app(
    name: str,
    model_names: list[str],
    api_key: str | None = None,
    max_model_len: int | None = None,
    answers: dict[str, dict[str, Any]] | None = None,
    openwebui: bool = False,
) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
        if (
            api_key
            and not request.path.startswith("/_")
            and request.headers.get("Authorization") != f"Bearer {api_key}"
        ):
            return web.json_response({"error": {"message": "bad key", "type": "auth"}}, status=401)
        return await handler(request)

    app = web.Application(middlewares=[auth])
    app["name"] = name
    app["models"] = model_names
    app["max_model_len"] = max_model_len
    app["answers"] = answers or {}
    app["openwebui"] = openwebui
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_stats/{id}", stats)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--models", default="fake-model")
    parser.add_argument("--api-key")
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--answers", help="JSON file: question -> knobs")
    parser.add_argument("--openwebui", action="store_true")
    args = parser.parse_args()
    answers = json.loads(open(args.answers).read()) if args.answers else None
    web.run_app(
        make_app(args.name, args.models.split(","), args.api_key, args.max_model_len, answers, args.openwebui),
        host="127.0.0.1",
        port=args.port,
        print=None,
        access_log=None,
        handler_cancellation=True,
    )


if __name__ == "__main__":
    main()
