"""`/v1/embeddings` served offline by the local all-MiniLM-L6-v2 (the model document search uses), through a
real `chatgate serve` whose only upstream (a fake) serves chat and no embeddings model, driven by the openai
SDK with an ordinary user key."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import Fake, Gateway, start_fake, start_gateway, stop, user_key

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def fake() -> Iterator[Fake]:
    f = start_fake("chat-only", "fake-model")  # its own: every request it gets is counted under "default"
    yield f
    stop(f.proc)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake: Fake) -> Iterator[Gateway]:
    # One worker: the test that the model's work leaves the event loop free must land on the same process.
    config = {"upstreams": [{"name": "chat", "base_url": fake.base_url}]}
    gateway = start_gateway(tmp_path_factory.mktemp("gw"), config, args=["--workers", "1"])
    yield gateway
    stop(gateway.proc)


@pytest.fixture(scope="module")
def sdk(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=user_key(gw, "u-embed"), max_retries=0, timeout=120)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_the_local_model_answers_in_openais_shape(sdk: openai.OpenAI, fake: Fake) -> None:
    one = sdk.embeddings.create(model=MODEL, input="The cat sits on the mat.")  # the SDK asks for base64
    assert one.object == "list" and one.model == MODEL
    assert [d.index for d in one.data] == [0] and one.data[0].object == "embedding"
    vector = one.data[0].embedding
    assert len(vector) == 384 and math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)
    assert one.usage.prompt_tokens == one.usage.total_tokens > 2  # the model's own tokens, [CLS] and [SEP] in

    texts = ["The cat sits on the mat.", "A kitten is lying on the rug.", "Stock markets fell sharply today."]
    many = sdk.embeddings.create(model="local-embed", input=texts, encoding_format="float")  # the alias
    assert many.model == MODEL and [d.index for d in many.data] == [0, 1, 2]
    cat, kitten, stocks = (d.embedding for d in many.data)
    assert cosine(cat, kitten) > cosine(cat, stocks) + 0.2
    assert max(abs(x - y) for x, y in zip(cat, vector, strict=True)) < 1e-5  # base64 and floats: one vector
    assert fake.stats("default")["attempts"] == 0  # never sent to the chat upstream


def test_text_only_and_its_own_dimension(sdk: openai.OpenAI, gw: Gateway) -> None:
    for bad, field in (([101, 2003], "input"), ([[101, 2003]], "input")):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.embeddings.create(model=MODEL, input=bad)  # type: ignore[arg-type]
        error = caught.value.body
        assert isinstance(error, dict) and error["details"]["field"] == field and "token" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model=MODEL, input="hi", dimensions=128)
    assert isinstance(caught.value.body, dict) and caught.value.body["details"]["field"] == "dimensions"
    with pytest.raises(openai.BadRequestError):  # an embeddings model does not chat
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    ids = {m.id for m in sdk.models.list()}
    assert {MODEL, "local-embed", "fake-model"} <= ids
    ready = httpx.get(gw.url + "/ready", headers={"Authorization": f"Bearer {gw.key}"}).json()
    assert ready["upstreams"]["local-embeddings"]["reachable"] is True


def test_admitted_and_accounted_like_any_request(sdk: openai.OpenAI) -> None:
    first = sdk.embeddings.with_raw_response.create(model=MODEL, input="one")
    second = sdk.embeddings.with_raw_response.create(model=MODEL, input="two words")
    left = [int(r.headers["x-ratelimit-remaining-requests"]) for r in (first, second)]
    assert left[1] == left[0] - 1
    assert int(second.headers["x-ratelimit-remaining-tokens"]) < int(first.headers["x-ratelimit-remaining-tokens"])


def in_flight(gw: Gateway) -> int:
    """``chatgate_http_requests_in_flight`` as the worker sees it (the scrape itself counted)."""
    text = httpx.get(gw.url + "/metrics", headers={"Authorization": f"Bearer {gw.key}"}, timeout=60).text
    line = next(x for x in text.splitlines() if x.startswith("chatgate_http_requests_in_flight"))
    return int(float(line.split()[-1]))


def test_the_model_works_off_the_event_loop(sdk: openai.OpenAI, gw: Gateway) -> None:
    """While a large batch is being embedded, the same (only) worker answers other requests: a scrape sees
    the embeddings request in flight."""
    alone = in_flight(gw)
    events: list[str] = []
    texts = [f"Sentence number {i} about the weather, the sea and the mountains of the north. " * 4 for i in range(256)]

    def big() -> None:
        sdk.embeddings.create(model=MODEL, input=texts, encoding_format="float")
        events.append("embedded")

    worker = threading.Thread(target=big)
    worker.start()
    while worker.is_alive() and "answered meanwhile" not in events:
        if in_flight(gw) > alone and worker.is_alive():
            events.append("answered meanwhile")
    worker.join()
    assert events == ["answered meanwhile", "embedded"]
