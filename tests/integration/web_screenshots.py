"""``make screenshots``: PNGs of the chat page and the admin dashboard, filled with the fake upstream's data.

Run: ``python -m tests.integration.web_screenshots docs/img``. Starts the fake upstream (with scripted answers)
and a real ``chatgate serve``, makes a user, an HR collection and a few conversations, then photographs the
pages in Debian's Chromium.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from tests.conftest import start_fake, start_gateway, stop, user_key
from tests.integration.test_rag import POLICY, make_collection
from tests.integration.test_web_chat import config
from tests.integration.web_browser import launch, open_tab, send, sign_in

LEAVE = "How long is parental leave, and how do I book holidays?"
CODE = "How do I call chatgate from Python?"
ANSWERS = {
    LEAVE: {
        "answer": "Parental leave is **twenty six weeks at full pay** for every employee [2].\n\n"
        "Holidays (thirty a year) are booked through the *staff portal* [1].",
        "chunk_delay": 0.01,
    },
    CODE: {
        "answer": "Use the official `openai` SDK and point it at chatgate:\n\n```python\nfrom openai import OpenAI\n\n"
        'client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="cg-...")\n'
        'reply = client.chat.completions.create(\n    model="local",\n'
        '    messages=[{"role": "user", "content": "Hello!"}],\n)\nprint(reply.choices[0].message.content)\n```\n\n'
        "Streaming works the same way with `stream=True`.",
    },
}


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        answers = Path(tmp) / "answers.json"
        answers.write_text(json.dumps(ANSWERS))
        fake = start_fake("web", "fake-model", api_key="upstream-secret-web", answers=answers)
        gw = start_gateway(Path(tmp) / "gw", config(fake))
        try:
            make_collection(gw, gw.key, "hr", "admin", {"policy.md": POLICY.encode()})
            ada = user_key(gw, "ada")
            for i, question in enumerate(["What is a context window?", "Summarise our travel policy."] * 3):
                headers = {"Authorization": f"Bearer {ada if i % 2 else gw.key}"}
                httpx.post(gw.url + "/api/v1/chat", json={"message": question}, headers=headers, timeout=30)
            with sync_playwright() as pw:
                browser = launch(pw)
                with open_tab(browser, gw.url, viewport={"width": 1280, "height": 800}) as tab:
                    sign_in(tab, ada)
                    tab.page.get_by_label("Model", exact=True).select_option("fake-model")
                    send(tab, CODE)
                    tab.page.locator("article.msg.assistant[data-state=done]").first.wait_for()
                    tab.page.get_by_label("Model", exact=True).select_option("hr-assistant")
                    answer = send(tab, LEAVE)
                    answer.get_by_role("button", name="Source 1: Leave policy").first.click()
                    tab.page.locator("li.source .source-text").first.wait_for()
                    tab.page.wait_for_function(
                        "!document.querySelector('li.source .source-text').textContent.startsWith('Loading')"
                    )
                    tab.page.screenshot(path=str(out / "web-chat.png"))
                with open_tab(browser, gw.url, viewport={"width": 375, "height": 740}) as tab:
                    sign_in(tab, ada)
                    tab.page.get_by_role("button", name="Conversations", exact=True).click()
                    tab.page.locator(".session-open").first.click()
                    tab.page.locator("article.msg.assistant").first.wait_for()
                    tab.page.screenshot(path=str(out / "web-chat-narrow.png"))
                with open_tab(browser, gw.url, viewport={"width": 1280, "height": 1000}) as tab:
                    sign_in(tab, gw.key, "/ui/admin")
                    tab.page.locator("[data-chart=requests] canvas").wait_for()
                    tab.page.screenshot(path=str(out / "web-admin.png"))
                browser.close()
        finally:
            stop(gw.proc)
            stop(fake.proc)
    print("wrote", ", ".join(str(out / n) for n in ("web-chat.png", "web-chat-narrow.png", "web-admin.png")))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img"))
