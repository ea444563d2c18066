"""The README's tour, top to bottom, as a reader runs it: its own commands (read from README.md, see
``readme_tour.py``) against a real `chatgate serve` in front of the fake upstream (serving the model `local`),
with the keys the tour creates, each step's outcome checked against what the README says it is. The same
tour's chat steps against the bundled model: tests/e2e/test_readme_tour_local.py."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

from tests.conftest import Fake, Gateway, start_fake, start_gateway, stop
from tests.integration.readme_tour import Block, Tour, merge, tour_blocks

SAMPLES = Path(__file__).parents[1] / "rag" / "samples"
Results = list[tuple[str, list[str], subprocess.CompletedProcess[str]]]  # (command, documented, result)


def documented_json(lines: list[str]) -> Any:
    """The JSON a command's comment lines show (up to the ``(HTTP ...)`` note)."""
    text = " ".join(lines).split("(HTTP")[0]
    return json.loads(text)


def answer(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"not JSON: {result.stdout[:500]!r} {result.stderr[:500]!r}") from None
    assert isinstance(data, dict)
    return data


def events(result: subprocess.CompletedProcess[str]) -> list[Any]:
    out = []
    for line in result.stdout.splitlines():
        if line.startswith("data: "):
            out.append(line[6:] if line[6:] == "[DONE]" else orjson.loads(line[6:]))
    return out


class ServedTour(Tour):
    """A tour against a gateway this test starts (``make run``), whose config file ``config`` blocks extend."""

    gw: Gateway | None = None
    fake: Fake | None = None
    config_file: Path | None = None
    config: dict[str, Any]

    def upstream_bodies(self) -> list[dict[str, Any]]:
        assert self.fake is not None
        return self.fake.stats("default")["bodies"]  # type: ignore[no-any-return]


# ---- what each step of the README says happens -----------------------------------------------------------


def check_ask(tour: ServedTour, results: Results) -> None:
    ((_, _, result),) = results
    data = answer(result)
    assert data["object"] == "chat.completion" and data["choices"][0]["message"]["content"].strip(), data


def check_stream(tour: ServedTour, results: Results) -> None:
    ((_, _, result),) = results
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the streamed story printed nothing"


def check_error(tour: ServedTour, results: Results) -> None:
    ((command, said, result),) = results
    assert answer(result) == documented_json(said)  # the error body, word for word
    status = re.search(r"\(HTTP (\d+)", " ".join(said))
    assert status
    code = tour.sh(command + " -o /dev/null -w '%{http_code}'")
    assert code.stdout == status.group(1)


def check_config_show(tour: ServedTour, results: Results) -> None:
    ((_, _, result),) = results  # `make run CONFIG=...` is the running server
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert [u["name"] for u in shown["upstreams"]] == ["vllm-a", "vllm-b", "openai"]
    assert shown["upstreams"][2]["api_key"] == "**********" and "sk-" not in result.stdout  # secrets masked
    assert shown["aliases"] == {"chat": "meta-llama/Llama-3.1-8B-Instruct"}


def check_users(tour: ServedTour, results: Results) -> None:
    (_, _, created), (_, _, key), (_, said, first), (_, _, second), (_, _, sessions) = results
    assert created.returncode == 0 and key.returncode == 0, created.stderr + key.stderr
    assert tour.user_key is not None and tour.user_key.startswith("cg-")
    one, two = answer(first), answer(second)
    promised = set(re.findall(r'"(\w+)": ', said[0]))  # the README elides the values: its keys are the promise
    assert set(one) == promised == {"response", "session_id", "cached", "sources", "usage"}
    assert one["sources"] == [] and one["cached"] is False and one["response"]
    assert two["session_id"] == one["session_id"] == tour.session_id  # the conversation goes on
    listed = answer(sessions)["data"]
    assert [s["session_id"] for s in listed] == [one["session_id"]]  # Ada's sessions only


def check_ingest(tour: ServedTour, results: Results) -> None:
    ((_, _, result),) = results
    assert result.returncode == 0, result.stdout + result.stderr
    added = next(line for line in result.stdout.splitlines() if " added " in line)
    assert re.search(r"added\W+1\b", added), result.stdout


def check_assistant(tour: ServedTour, results: Results) -> None:
    ((_, said, result),) = results
    data = answer(result)
    assert "warnings" not in data, data["warnings"]  # the operator's collection resolves for a user key
    shown = re.search(r'"sources": \[\{"document": "([^"]+)", "page": (\w+)', said[0])
    assert shown
    assert data["sources"] and data["sources"][0]["document"] == shown.group(1) == "handbook/leave.md"
    assert data["sources"][0]["page"] is None and shown.group(2) == "null"
    system = tour.upstream_bodies()[-1]["messages"][0]["content"]
    assert system.startswith("You answer HR questions.") and "sixteen weeks" in system and "[1] " in system


def check_agent(tour: ServedTour, results: Results) -> None:
    ((_, said, result),) = results
    assert result.returncode == 0, result.stderr
    seen = events(result)
    tool = [e for e in seen if isinstance(e, dict) and e.get("type") == "tool"]
    done = [e for e in seen if isinstance(e, dict) and e.get("type") == "tool_result"]
    first_said = orjson.loads(said[0].removeprefix("data: "))
    assert tool[0] == first_said  # {"type":"tool","step":1,"name":"search_documents","arguments":{...}}
    searched = next(e for e in done if e["name"] == "search_documents")
    assert searched["outcome"] == "ok" and searched["sources"] >= 1  # the README's 3 depends on the chunks
    assert {e["name"] for e in done} == {"search_documents", "current_time"}
    final = next(e for e in seen if isinstance(e, dict) and e.get("type") == "done")
    assert final["response"] and final["sources"][0]["document"] == "handbook/leave.md"
    assert seen[-1] == "[DONE]"


def check_chatkit(tour: ServedTour, results: Results) -> None:
    (_, _, created), (_, listed_said, listed) = results
    assert created.returncode == 0, created.stderr
    seen = [e for e in events(created) if isinstance(e, dict)]
    types = [e["type"] for e in seen]
    assert types[0] == "thread.created" and tour.thread_id == seen[0]["thread"]["id"], types
    done = [e["item"]["type"] for e in seen if e["type"] == "thread.item.done"]
    assert done[0] == "user_message" and "assistant_message" in done, done  # as the README's comments say
    assert any(t == "thread.item.updated" for t in types), types  # the text deltas
    items = answer(listed)["data"]
    assert [i["type"] for i in items] == ["user_message", "assistant_message"], items
    assert all(i["thread_id"] == tour.thread_id and i["id"].startswith("msg_") for i in items), items
    assert '"type":"user_message"' in listed_said[0] and '"type":"assistant_message"' in listed_said[0]


CHECKS: dict[str, Callable[[ServedTour, Results], None]] = {
    "ask": check_ask,
    "stream": check_stream,
    "error": check_error,
    "config-show": check_config_show,
    "users": check_users,
    "ingest": check_ingest,
    "assistant": check_assistant,
    "agent": check_agent,
    "chatkit": check_chatkit,
}


# ---- running it ---------------------------------------------------------------------------------------


def run_command(tour: Tour, block: Block, command: str) -> subprocess.CompletedProcess[str]:
    result = tour.sh(command)
    if " keys create " in f" {command} ":
        tour.user_key = next((w for w in result.stdout.split() if w.startswith("cg-")), None)
    if tour.session_id is None and '"session_id"' in result.stdout:
        tour.session_id = answer(result)["session_id"]
    if tour.thread_id is None and '"thread.created"' in result.stdout:
        created = next(e for e in events(result) if isinstance(e, dict) and e.get("type") == "thread.created")
        tour.thread_id = created["thread"]["id"]
    return result


def start(tour: ServedTour, block: Block, env: dict[str, str], ready_timeout: float = 30.0) -> None:
    """The ``start`` block: its exports go to the reader's shell, ``make run`` is the test's server, started
    with them (and ``env``: where its model is)."""
    for command, _ in block.commands():
        if command.startswith("export "):
            name, _, value = command.removeprefix("export ").partition("=")
            tour.env[name] = value
        else:
            assert command == "make run", command
    assert tour.config_file is not None
    tour.config_file.write_text(yaml.safe_dump(tour.config))
    tour.gw = start_gateway(
        tour.folder, env={**tour.env, **env}, args=["--config", str(tour.config_file)], ready_timeout=ready_timeout
    )
    tour.url = tour.gw.url


def reload_config(tour: ServedTour, added: dict[str, Any]) -> None:
    """A ``config`` block: added to the server's config file, then ``kill -HUP`` (as the README says)."""
    assert tour.gw is not None and tour.config_file is not None
    tour.config = merge(tour.config, added)
    tour.config_file.write_text(yaml.safe_dump(tour.config))
    tour.gw.proc.send_signal(signal.SIGHUP)
    names = {a["name"] for a in added.get("assistants", [])}
    headers = {"Authorization": f"Bearer {tour.env['CHATGATE_ADMIN_KEY']}"}
    deadline, streak = time.monotonic() + 30, 0
    while streak < 6:  # every worker reloaded: several answers in a row list them
        assert time.monotonic() < deadline, "the assistants were not reloaded"
        listed = {m["id"] for m in httpx.get(tour.url + "/v1/models", headers=headers).json()["data"]}
        streak = streak + 1 if names <= listed else 0
        time.sleep(0.05)


def run_tour(
    tour: ServedTour, env: dict[str, str], only: set[str] | None = None, ready_timeout: float = 30.0
) -> list[str]:
    """Every block of the tour in order (the steps in ``only``, when given, of those that run commands);
    the steps checked."""
    checked = []
    for block in tour_blocks():
        if block.step.startswith("skip:"):
            continue
        if block.step.startswith("file "):
            (tour.folder / block.step.removeprefix("file ").strip()).write_text(block.text)
            continue
        if block.step == "config":
            if only is None:
                reload_config(tour, yaml.safe_load(block.text))
            continue
        if block.step == "start":
            start(tour, block, env, ready_timeout)
            continue
        if only is not None and block.step not in only:
            continue
        if block.lang == "python":
            results: Results = [(block.text, [], tour.python(block.text))]
        else:
            results = [
                (command, said, run_command(tour, block, command))
                for command, said in block.commands()
                if not command.startswith("make run")  # the running server
            ]
        CHECKS[block.step](tour, results)
        checked.append(block.step)
    return checked


def agent_script(blocks: list[Block]) -> dict[str, Any]:
    """The fake's answers to the agent step's question: search, then the time, then an answer."""
    (block,) = [b for b in blocks if b.step == "agent"]
    ((command, _),) = block.commands()
    body = json.loads(re.search(r"-d '(\{.*\})'", command).group(1))  # type: ignore[union-attr]
    calls = [{"name": "search_documents", "arguments": {"query": "parental leave"}}, {"name": "current_time"}]
    return {body["message"]: {"script": [{"call": calls}, {"answer": "Sixteen weeks of parental leave [1]."}]}}


def test_every_tour_block_is_marked_and_every_step_checked() -> None:
    blocks = tour_blocks()
    steps = {b.step for b in blocks if not b.step.startswith(("skip:", "file ")) and b.step not in ("config", "start")}
    assert steps == set(CHECKS)
    assert blocks[0].step == "start"


def test_the_readme_tour_works_as_written(tmp_path: Path) -> None:
    blocks = tour_blocks()
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(agent_script(blocks)))
    fake = start_fake("tour", "local", answers=answers)
    folder = tmp_path / "tour"
    (folder / "handbook").mkdir(parents=True)
    (folder / "handbook" / "leave.md").write_text((SAMPLES / "handbook.md").read_text())
    tour = ServedTour(folder, url="")
    tour.fake, tour.config_file, tour.config = fake, folder / "server.yaml", {}
    try:
        checked = run_tour(tour, {"CHATGATE_UPSTREAM_BASE_URL": fake.base_url})
        assert checked == [b.step for b in blocks if b.step in CHECKS]
    finally:
        if tour.gw is not None:
            stop(tour.gw.proc)
        stop(fake.proc)
