"""The web page: the chat page (``/ui/``) and the admin dashboard (``/ui/admin``).

Static files built by Vite into ``chatgate/web/dist`` (``make install``), read into memory at start and served
with their gzip and brotli twins (made at build time) by ``Accept-Encoding``. Hashed asset names are cached for
a year (``immutable``); the two HTML pages are revalidated on every load (``no-cache`` with an ETag) and carry
a strict Content-Security-Policy. The files are public; the admin dashboard's HTML is the same code for
everyone and shows nothing until the admin routes answer (they are a 404 to any other key).

``CookieSignIn`` lets a deployer sign users in with a JWT cookie: only on requests that carry the page's
``X-Chatgate-Web`` header and no key of their own, so a cross-site request (which cannot set the header)
never rides on the cookie.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request, cookie_parser
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from chatgate.errors import MethodNotAllowed, NotFound

log = logging.getLogger("chatgate")

DIST = Path(__file__).resolve().parent.parent / "web" / "dist"
PUBLIC_PATHS = ("/ui", "/ui/*")
PAGES = {"": "index.html", "admin": "admin.html"}  # page path under /ui/ -> file
WEB_HEADER = b"x-chatgate-web"
IMMUTABLE = "public, max-age=31536000, immutable"
COMPRESSED = {"br": ".br", "gzip": ".gz"}  # preferred first
_HASHED = re.compile(r"^assets/.+-[A-Za-z0-9_-]{8,}\.\w+$")  # Vite's name-<hash>.ext
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class File:
    media_type: str
    bodies: dict[str, bytes]  # content coding ("identity", "br", "gzip") -> bytes
    etag: str
    cache_control: str


def load(dist: Path) -> dict[str, File]:
    """Every built file under ``dist`` by its relative path, with its pre-compressed twins."""
    files: dict[str, File] = {}
    if not dist.is_dir():
        return files
    for path in sorted(dist.rglob("*")):
        if not path.is_file() or path.suffix in (".br", ".gz") or path.name.startswith("."):
            continue
        name = path.relative_to(dist).as_posix()
        body = path.read_bytes()
        bodies = {"identity": body}
        for coding, suffix in COMPRESSED.items():
            twin = path.with_name(path.name + suffix)
            if twin.is_file():
                bodies[coding] = twin.read_bytes()
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if media_type.startswith("text/") or media_type in ("application/javascript", "image/svg+xml"):
            media_type += "; charset=utf-8"
        files[name] = File(
            media_type=media_type,
            bodies=bodies,
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            cache_control=IMMUTABLE if _HASHED.match(name) else "no-cache",
        )
    return files


def accepted(header: str) -> set[str]:
    """The content codings an ``Accept-Encoding`` header allows (``q=0`` refuses one)."""
    out = set()
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        q = params.strip().removeprefix("q=").strip() if params.strip().startswith("q=") else "1"
        try:
            allowed = float(q) > 0
        except ValueError:
            allowed = False
        if allowed and coding.strip():
            out.add(coding.strip().lower())
    return out


class WebPages:
    """The routes that serve the built files, from memory."""

    def __init__(self, csp: str, dist: Path = DIST) -> None:
        self.files = load(dist)
        self.csp = csp
        if "index.html" not in self.files:
            log.warning("the web page is not built: run `make install` (npm ci and npm run build in src/chatgate/web)")

    def routes(self) -> list[BaseRoute]:
        return [Mount("/ui", app=self, name="web")]  # "/ui" itself: the router redirects to "/ui/"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, mount = scope["path"], scope.get("root_path", "")  # the mount's own root_path ends in /ui
        name = path[len(mount) :] if mount and path.startswith(mount) else path.removeprefix("/ui")
        response = self.respond(Request(scope), name.lstrip("/"))
        await response(scope, receive, send)

    def respond(self, request: Request, name: str) -> Response:
        path = request.url.path
        if request.method not in ("GET", "HEAD"):
            raise MethodNotAllowed(f"Method {request.method} is not allowed here.", details={"path": path})
        name = PAGES.get(name.rstrip("/"), name)
        file = self.files.get(name)
        if file is None:
            if name in PAGES.values():
                raise NotFound("The web page is not built: run `make install`.", details={"path": path})
            raise NotFound(f"No route {request.method} {path}.", details={"path": path})
        headers = {
            "Cache-Control": file.cache_control,
            "ETag": file.etag,
            "Vary": "Accept-Encoding",
            "X-Content-Type-Options": "nosniff",
        }
        if name.endswith(".html"):
            headers.update(
                {
                    "Content-Security-Policy": self.csp,
                    "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY",
                    "Cross-Origin-Opener-Policy": "same-origin",
                }
            )
        if request.headers.get("if-none-match") == file.etag:
            return Response(status_code=304, headers=headers)
        codings = accepted(request.headers.get("accept-encoding", ""))
        coding = next((c for c in COMPRESSED if c in codings and c in file.bodies), "identity")
        if coding != "identity":
            headers["Content-Encoding"] = coding
        body = file.bodies[coding]
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return Response(status_code=200, headers=headers, media_type=file.media_type)
        return Response(body, headers=headers, media_type=file.media_type)


class CookieSignIn:
    """The deployer's JWT cookie as the credential of the page's own requests (``web.jwt_cookie``)."""

    def __init__(self, app: ASGIApp, cookie: str) -> None:
        self.app = app
        self.cookie = cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            web = False
            cookies = None
            for name, value in scope["headers"]:
                if name in (b"authorization", b"x-api-key"):
                    break  # a key of its own wins
                if name == WEB_HEADER:
                    web = True
                elif name == b"cookie":
                    cookies = value
            else:
                if web and cookies is not None:
                    token = cookie_parser(cookies.decode("latin-1")).get(self.cookie, "")
                    if _JWT.match(token):
                        headers = [*scope["headers"], (b"authorization", b"Bearer " + token.encode())]
                        scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
