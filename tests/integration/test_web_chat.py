"""The chat page in a real browser against a real `chatgate serve` and the fake upstream: signing in,
streamed answers, stopping, sessions, grounded answers and their sources, documents, a 429's countdown,
hostile markdown and documents that must not run, the narrow layout, the deployer's JWT cookie."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import Fake, Gateway, start_fake, start_gateway, stop, user_key
from tests.integration.test_rag import EMBED_MODEL, POLICY, SAMPLES, make_collection
from tests.integration.web_browser import Tab, open_tab, send, sign_in

HOSTILE_DOC = (
    "Hostile notes\n\nThe launch window opens at dawn. "
    '<img src=x onerror="window.__pwned = \'doc-img\'"> <script>window.__pwned = "doc-script"</script> '
    "<b onmouseover=\"window.__pwned='doc-b'\">bold</b> the launch window closes at dusk.\n"
)
HOSTILE_ANSWER = (
    "Here [1]. <img src=x onerror=\"window.__pwned = 'img'\">\n\n<script>window.__pwned = 'script'</script>\n\n"
    "[click me](javascript:window.__pwned='link') <a href=\"javascript:window.__pwned='a'\">and me</a> "
    "<svg onload=\"window.__pwned='svg'\"></svg> <iframe srcdoc=\"<script>parent.__pwned='iframe'</script>\">"
    "</iframe> <form action=\"javascript:window.__pwned='form'\"><button>go</button></form>"
)


def knobs(text: str, **kw: Any) -> str:
    """A message carrying fake-upstream knobs (read and removed by the fake: tests/fake_upstream.py)."""
    return f"[fake:{json.dumps(kw)}] {text}"


@pytest.fixture(scope="module")
def fake() -> Iterator[Fake]:
    f = start_fake("web", "fake-model", api_key="upstream-secret-web")
    yield f
    stop(f.proc)


def config(fake: Fake, **extra: Any) -> dict[str, Any]:
    up = {"name": "web", "base_url": fake.base_url, "api_key": "upstream-secret-web", "max_retries": 0}
    return {
        "upstreams": [up],
        "rag": {
            "embeddings": {
                "backend": "openai",
                "base_url": fake.base_url,
                "api_key": "upstream-secret-web",
                "model": EMBED_MODEL,
            },
            "retrieval": {"job_poll_interval": 0.2},
        },
        "assistants": [
            {"name": "hr-assistant", "model": "fake-model", "collections": ["hr"], "description": "HR handbook"},
            {"name": "hostile-assistant", "model": "fake-model", "collections": ["hostile"]},
            {
                "name": "hr-tools",
                "model": "fake-model",
                "collections": ["hr"],
                "retrieval": "tool",
                "tools": ["current_time"],
            },
        ],
        **extra,
    }


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake: Fake) -> Iterator[Gateway]:
    g = start_gateway(tmp_path_factory.mktemp("web-gw"), config(fake))
    make_collection(g, g.key, "hr", "admin", {"policy.md": POLICY.encode()})
    make_collection(g, g.key, "hostile", "admin", {"hostile.txt": HOSTILE_DOC.encode()})
    yield g
    stop(g.proc)


@pytest.fixture(scope="module")
def ada(gw: Gateway) -> str:
    return user_key(gw, "ada")


def done(answer: Any) -> None:
    expect(answer).to_have_attribute("data-state", "done")


def test_sign_in_refuses_a_wrong_key_then_accepts_the_right_one(tab: Tab, gw: Gateway, ada: str) -> None:
    page = tab.page
    tab.goto("/ui/")
    page.get_by_label("API key", exact=True).fill("cg-not-a-real-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Sign-in failed: Invalid API key.")
    assert page.evaluate("sessionStorage.getItem('chatgate.key')") is None  # a refused key is not kept
    page.get_by_label("API key", exact=True).fill(ada)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    options = page.get_by_label("Model", exact=True).locator("option")
    expect(options).to_have_text(["hr-assistant — HR handbook", "hostile-assistant", "hr-tools", "fake-model"])
    assert page.evaluate("sessionStorage.getItem('chatgate.key')") == ada
    assert ada not in page.url
    assert ada not in gw.logs()  # no key in URLs or logs
    page.reload()  # kept for the tab
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key", exact=True)).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('chatgate.key')") is None


def test_a_revoked_key_gets_a_clear_message(tab: Tab, gw: Gateway) -> None:
    tab.goto("/ui/")
    tab.page.evaluate("sessionStorage.setItem('chatgate.key', 'cg-revoked-or-expired')")
    tab.page.reload()
    expect(tab.page.get_by_role("alert")).to_contain_text("Your key is no longer accepted: Invalid API key.")


def test_an_answer_streams_in_as_it_is_written(tab: Tab, ada: str) -> None:
    sign_in(tab, ada)
    page = tab.page
    page.evaluate(
        """() => {
        window.__seen = [];
        new MutationObserver(() => {
            const body = document.querySelector('article.msg.assistant .msg-body');
            if (body) window.__seen.push([body.closest('article').dataset.state, body.textContent]);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }"""
    )
    answer = send(tab, knobs("one two three four five six", id="web-stream", chunk_delay=0.15))
    done(answer)
    expect(answer.locator(".msg-body")).to_have_text("echo: one two three four five six")
    seen = page.evaluate("window.__seen")
    partial = [text for state, text in seen if state == "streaming" and text and text != seen[-1][1]]
    assert partial, seen  # text was on the page before the answer was complete
    assert all(seen[-1][1].startswith(text.strip()) for text in partial)
    requests = page.locator("[data-unit=requests]")
    expect(requests).to_have_attribute("data-limit", "60")
    assert int(requests.get_attribute("data-remaining") or "60") < 60
    expect(page.locator("[data-unit=tokens]")).to_contain_text("tokens left")


def test_stop_cancels_the_answer_and_the_upstream_call(tab: Tab, ada: str, fake: Fake) -> None:
    sign_in(tab, ada)
    page = tab.page
    long = " ".join(f"word{i}" for i in range(60))
    answer = send(tab, knobs("go on", id="web-stop", chunk_delay=0.3, answer=long))
    expect(answer.locator(".msg-body")).to_contain_text("word1")
    page.get_by_role("button", name="Stop").click()
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.locator(".msg-status")).to_have_text("Stopped.")
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    deadline = time.monotonic() + 30
    while fake.stats("web-stop")["cancelled"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for the upstream to see the disconnect, not for a fixed time
    assert fake.stats("web-stop") | {"bodies": None} == {
        "attempts": 1,
        "cancelled": 1,
        "completed": 0,
        "bodies": None,
    }
    assert "word59" not in answer.inner_text()


def test_sessions_open_switch_and_delete(tab: Tab, gw: Gateway) -> None:
    key = user_key(gw, "sessions-user")
    sign_in(tab, key)
    page = tab.page
    done(send(tab, "first question"))
    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("article.msg")).to_have_count(0)
    done(send(tab, "second question"))
    items = page.locator("#session-list .session")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text("second question")  # newest activity first
    page.locator(".session-open", has_text="first question").click()
    expect(page.locator("article.msg.user")).to_have_text(["first question"])
    expect(page.locator("article.msg.assistant .msg-body")).to_have_text(["echo: first question"])
    done(send(tab, "a follow-up"))  # continues the opened session
    expect(page.locator("article.msg.user")).to_have_count(2)
    delete = page.get_by_role("button", name="Delete the conversation “second question”")
    delete.click()
    expect(delete).to_have_text("Delete?")  # asks once more, without a dialog
    delete.click()
    expect(items).to_have_count(1)
    expect(items.nth(0)).to_contain_text("first question")
    stored = httpx.get(gw.url + "/api/v1/chat/sessions", headers={"Authorization": f"Bearer {key}"}).json()["data"]
    assert [s["message_count"] for s in stored] == [4]


def test_a_grounded_answer_links_its_citations_to_the_sources(tab: Tab, ada: str) -> None:
    sign_in(tab, ada)
    page = tab.page
    page.get_by_label("Model", exact=True).select_option("hr-assistant")
    answer = send(tab, knobs("How long is parental leave?", answer="Parental leave is twenty six weeks [1]."))
    done(answer)
    cite = answer.get_by_role("button", name="Source 1: Leave policy")
    expect(cite).to_have_text("[1]")
    cite.click()
    panel = page.get_by_role("complementary", name="Sources")
    expect(panel).to_be_visible()
    source = panel.locator("li.source").first
    expect(source).to_be_focused()
    expect(source.locator(".source-title")).to_have_text("[1] Leave policy")
    expect(source.locator(".source-facts")).to_contain_text("score")
    expect(source.locator(".source-text")).to_contain_text("Parental leave is twenty six weeks at full pay")
    page.keyboard.press("Escape")
    expect(panel).to_be_hidden()
    expect(cite).to_be_focused()


def test_hostile_markdown_and_documents_never_run(tab: Tab, ada: str) -> None:
    sign_in(tab, ada)
    page = tab.page
    page.get_by_label("Model", exact=True).select_option("hostile-assistant")
    answer = send(tab, knobs("When does the launch window open?", answer=HOSTILE_ANSWER))
    done(answer)
    body = answer.locator(".msg-body")
    expect(body).to_contain_text("click me")
    assert body.locator("script, iframe, form, svg, [onerror], [onload], [onclick]").count() == 0
    for link in body.locator("a").all():
        assert not (link.get_attribute("href") or "").lower().startswith("javascript:")
    body.get_by_text("click me").click()
    body.get_by_text("and me").click()
    answer.locator("button.cite").first.click()
    text = page.locator("li.source .source-text").first
    expect(text).to_contain_text("<img src=x onerror=")  # the document's HTML shown as text
    expect(text).to_contain_text("<script>")
    assert page.locator("#sources img, #sources script, #sources b").count() == 0
    page.locator("li.source .source-text").first.hover()
    assert page.evaluate("window.__pwned") is None  # nothing ran
    # DOMPurify parses the markup in an inert document (no browsing context: nothing there can run), where
    # Chromium may still report the inline handlers against the page's CSP; such reports are expected here.
    tab.errors[:] = [e for e in tab.errors if "inline event handler" not in e]


def test_a_429_counts_down_then_lets_the_user_retry(tab: Tab, ada: str, fake: Fake) -> None:
    sign_in(tab, ada)
    page = tab.page
    page.get_by_label("Message", exact=True).fill(knobs("are you there?", id="web-429", fail=[429], retry_after=2))
    page.keyboard.press("Enter")
    notice = page.locator("#notice")
    expect(notice).to_have_attribute("data-kind", "rate-limit")
    expect(notice).to_contain_text("Try again in")
    retry = notice.get_by_role("button", name="Retry")
    expect(retry).to_be_disabled()
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    expect(notice).to_contain_text("You can try again now.")
    expect(retry).to_be_enabled()
    retry.click()
    expect(notice).to_be_hidden()
    answer = page.locator("article.msg.assistant").last
    done(answer)
    expect(answer.locator(".msg-body")).to_have_text("echo: are you there?")
    expect(page.locator("article.msg.user")).to_have_count(1)  # the refused message is not shown twice
    assert fake.stats("web-429")["attempts"] == 2


def test_documents_upload_with_progress_failures_and_delete(tab: Tab, gw: Gateway) -> None:
    key = user_key(gw, "uploader")
    sign_in(tab, key)
    page = tab.page
    page.get_by_role("button", name="Documents").click()
    dialog = page.get_by_role("dialog", name="Your documents")
    expect(dialog.get_by_text("No documents yet.")).to_be_visible()
    dialog.get_by_label("Files to upload").set_input_files(
        [
            {"name": "notes.md", "mimeType": "text/markdown", "buffer": b"# Notes\n\nThe vault opens at nine."},
            {"name": "corrupt.pdf", "mimeType": "application/pdf", "buffer": (SAMPLES / "corrupt.pdf").read_bytes()},
        ]
    )
    dialog.get_by_role("button", name="Upload", exact=True).click()
    job = dialog.locator(".job-status")
    expect(job).to_have_attribute("data-status", "done")
    expect(job).to_contain_text("2 of 2 files: 1 added")
    expect(dialog.get_by_role("list", name="Files that could not be indexed")).to_contain_text("corrupt.pdf: ")
    rows = dialog.locator("#document-rows tr")
    expect(rows).to_have_count(2)
    expect(dialog.locator("tr[data-status=ready]")).to_contain_text("notes.md")
    collections = httpx.get(gw.url + "/api/v1/collections", headers={"Authorization": f"Bearer {key}"}).json()
    mine = [c for c in collections["data"] if c["visibility"] == "private"]
    assert [c["name"] for c in mine] == ["My documents"]  # made for the user on the first upload
    delete = dialog.get_by_role("button", name="Delete notes.md")
    delete.click()
    delete.click()
    expect(rows).to_have_count(1)
    expect(dialog.locator("tr[data-status=failed]")).to_contain_text("corrupt.pdf")


def test_tool_steps_render_before_the_answer(tab: Tab, fake: Fake, ada: str) -> None:
    """An assistant that searches when the model asks (``retrieval: tool``): the page shows each tool-loop step
    as it runs ("searched: ..."), how it ended, then the answer with the sources the search found."""
    script = [
        {"call": [{"name": "search_documents", "arguments": {"query": "parental leave"}}]},
        {"call": [{"name": "current_time", "arguments": {"timezone": "Mars/Olympus"}}]},
        {"answer": "Twenty six weeks [1]."},
    ]
    sign_in(tab, ada)
    tab.page.get_by_label("Model", exact=True).select_option("hr-tools")
    answer = send(tab, knobs("how long is parental leave?", id="web-tools", script=script))
    done(answer)
    steps = answer.locator(".step")
    expect(steps).to_have_text(
        ["searched: “parental leave” · 2 found", 'current_time: {"timezone":"Mars/Olympus"} · failed (zone)']
    )
    expect(steps.nth(0)).to_have_attribute("data-state", "done")
    expect(steps.nth(1)).to_have_attribute("data-state", "failed")  # a zone it does not know
    expect(answer.locator(".msg-body")).to_contain_text("Twenty six weeks")
    assert len(fake.stats("web-tools")["bodies"]) == 3


def test_narrow_layout_has_no_horizontal_scroll_and_every_control_is_reachable(
    chromium: Browser, gw: Gateway, ada: str
) -> None:
    with open_tab(chromium, gw.url, viewport={"width": 375, "height": 740}) as tab:
        sign_in(tab, ada)
        page = tab.page
        wide = "```\n" + "x" * 400 + "\n```\n\n" + "y" * 300
        done(send(tab, knobs("wide", answer=wide)))
        assert page.evaluate("document.scrollingElement.scrollWidth <= document.scrollingElement.clientWidth")
        for name in ["Send", "Documents", "Sign out", "Conversations"]:
            expect(page.get_by_role("button", name=name, exact=True)).to_be_in_viewport()
        expect(page.get_by_label("Model", exact=True)).to_be_in_viewport()
        nav = page.get_by_role("navigation", name="Conversations")
        expect(nav.get_by_role("button", name="New conversation")).not_to_be_in_viewport()
        page.get_by_role("button", name="Conversations", exact=True).click()
        expect(nav.get_by_role("button", name="New conversation")).to_be_in_viewport()
        page.keyboard.press("Escape")
        expect(page.get_by_role("button", name="Conversations", exact=True)).to_be_focused()
        assert not tab.errors and not tab.foreign_requests()


def test_keyboard_alone_signs_in_and_converses(tab: Tab, ada: str) -> None:
    page = tab.page
    tab.goto("/ui/")
    expect(page.get_by_label("API key", exact=True)).to_be_focused()
    page.keyboard.type(ada)
    page.keyboard.press("Enter")
    message = page.get_by_label("Message", exact=True)
    expect(message).to_be_focused()
    page.keyboard.type("typed with keys")
    page.keyboard.press("Enter")
    answer = page.locator("article.msg.assistant").last
    done(answer)
    expect(answer.locator(".msg-body")).to_have_text("echo: typed with keys")
    page.keyboard.press("Shift+Tab")  # out of the message box, back through the page's controls
    assert page.evaluate("document.activeElement.tagName") in ("BUTTON", "SELECT", "A")


def jwt_for(secret: str, sub: str, expires_in: int) -> str:
    return jwt.encode({"sub": sub, "name": "Grace", "exp": int(time.time()) + expires_in}, secret, algorithm="HS256")


def test_the_deployers_jwt_cookie_signs_the_page_in(chromium: Browser, tmp_path: Path, fake: Fake) -> None:
    secret = "s" * 32
    extra = {"identity": {"jwt": {"secret": secret}}, "web": {"jwt_cookie": "cg_jwt"}}
    g = start_gateway(tmp_path / "jwt-gw", config(fake, **extra))
    try:
        token = jwt_for(secret, "grace", 600)
        with open_tab(chromium, g.url) as tab:
            tab.context.add_cookies([{"name": "cg_jwt", "value": token, "url": g.url, "sameSite": "Strict"}])
            tab.goto("/ui/")
            expect(tab.page.locator("body")).to_have_attribute("data-ready", "true")
            expect(tab.page.get_by_role("button", name="Sign out")).to_be_hidden()  # nothing kept to forget
            done(send(tab, "hello from grace"))
            assert tab.page.evaluate("sessionStorage.getItem('chatgate.key')") is None
        # The cookie alone (a cross-site form or image cannot add the page's header) is no credential.
        cookie = {"Cookie": f"cg_jwt={token}"}
        assert httpx.get(g.url + "/api/v1/chat/sessions", headers=cookie).status_code == 401
        sessions = httpx.get(g.url + "/api/v1/chat/sessions", headers={**cookie, "X-Chatgate-Web": "1"}).json()
        assert [s["message_count"] for s in sessions["data"]] == [2]
        with open_tab(chromium, g.url) as tab:
            tab.context.add_cookies([{"name": "cg_jwt", "value": jwt_for(secret, "grace", -600), "url": g.url}])
            tab.goto("/ui/")
            expect(tab.page.get_by_label("API key", exact=True)).to_be_visible()  # expired: the form, and why
            expect(tab.page.get_by_role("alert")).to_contain_text("Your sign-in was refused: ")
    finally:
        stop(g.proc)
