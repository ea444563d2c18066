"""Attachments, uploaded in two phases: ``attachments.create`` records one and answers with an upload URL on
chatgate (``/chatkit/attachments/{id}?token=...``), the page sends the bytes there, and a message then carries
its id. The URL's token (its SHA-256 kept with the record) is the only way to reach the file without the
owner's key: it goes to the owner alone. Files live under ``chatkit.attachments.directory``, mode 0600.

Images go to the model as image parts of the message that carries them. Documents (pdf, docx, txt, md, html)
are ingested, by the existing ingestion pipeline, into a private collection of the thread
(``chatkit-<thread id>``), which the assistant searches on this turn and the later ones.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from chatkit.store import AttachmentStore, NotFoundError
from chatkit.types import (
    Attachment,
    AttachmentCreateParams,
    AttachmentUploadDescriptor,
    FileAttachment,
    ImageAttachment,
    ThreadMetadata,
    UserMessageItem,
)

from chatgate.chatkit.server import COLLECTION
from chatgate.chatkit.store import Owner, new_id
from chatgate.errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from chatgate.rag.jobs import Upload
from chatgate.settings import Settings

if TYPE_CHECKING:
    from chatgate.chatkit.service import ChatKitService

ID = re.compile(r"atc_[0-9a-f]{32}")
EXTENSIONS = {
    "application/pdf": ".pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/html": ".html",
}
JOB_WAIT = 120.0  # seconds a message waits for its documents' ingestion


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def collection_name(thread_id: str) -> str:
    return "chatkit-" + thread_id


def looks_like(mime: str, data: bytes) -> bool:
    """The bytes are what the declared type says (by their signature; text must be UTF-8)."""
    signatures = {
        "image/png": (b"\x89PNG\r\n\x1a\n",),
        "image/jpeg": (b"\xff\xd8\xff",),
        "image/gif": (b"GIF87a", b"GIF89a"),
        "application/pdf": (b"%PDF-",),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document": (b"PK\x03\x04",),
    }
    if mime == "image/webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    if mime in signatures:
        return data.startswith(signatures[mime])
    if mime.startswith("text/"):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    return False


class Attachments(AttachmentStore[Owner]):
    def __init__(self, service: ChatKitService, settings: Settings) -> None:
        self.service = service
        self.store = service.store
        self.settings = settings.chatkit.attachments
        configured = self.settings.directory
        base = settings.data_dir.resolve()
        self.directory = (base / configured if configured and not configured.is_absolute() else configured) or (
            base / "chatkit-attachments"
        )
        self.base_url = self.settings.base_url.rstrip("/") if self.settings.base_url else None
        service.server.attachment_store = cast("AttachmentStore[Any]", self)
        service.server.images = self.images
        service.server.documents = self.ingest

    def path(self, attachment_id: str) -> Path:
        if not ID.fullmatch(attachment_id):
            raise NotFound("No such attachment.", details={"attachment_id": attachment_id})
        return self.directory / attachment_id

    # ---- AttachmentStore ---------------------------------------------------------------------------------

    def generate_attachment_id(self, mime_type: str, context: Owner) -> str:
        return new_id("attachment")

    async def create_attachment(self, input: AttachmentCreateParams, context: Owner) -> Attachment:
        """The record and its upload URL (``attachments.create``): the type and the size are checked here."""
        mime = input.mime_type.split(";", 1)[0].strip().lower()
        image = mime in self.settings.image_types
        if not image and mime not in self.settings.document_types:
            accepted = [*self.settings.image_types, *self.settings.document_types]
            raise BadRequest(
                f"Attachments of type {mime!r} are not accepted.",
                details={"field": "params.mime_type", "accepted": accepted},
            )
        if input.size > self.settings.max_bytes:
            raise PayloadTooLarge(
                f"An attachment may be {self.settings.max_bytes} bytes at most.",
                details={"field": "params.size", "max_bytes": self.settings.max_bytes},
            )
        if input.size < 0:
            raise BadRequest("'params.size' must not be negative.", details={"field": "params.size"})
        attachment_id = self.generate_attachment_id(mime, context)
        token = secrets.token_urlsafe(32)
        url = f"{self._origin(context)}/chatkit/attachments/{attachment_id}?token={token}"
        upload = AttachmentUploadDescriptor.model_validate(
            {"url": url, "method": "PUT", "headers": {"content-type": mime}}
        )
        made: Attachment
        if image:
            made = ImageAttachment.model_validate(
                {
                    "id": attachment_id,
                    "name": input.name,
                    "mime_type": mime,
                    "upload_descriptor": upload,
                    "preview_url": url,
                }
            )
        else:
            made = FileAttachment(id=attachment_id, name=input.name, mime_type=mime, upload_descriptor=upload)
        await self.store.save_attachment(made, context)
        await self.store.set_attachment(attachment_id, context, token_digest=digest(token), size=input.size)
        return made

    async def delete_attachment(self, attachment_id: str, context: Owner) -> None:
        """The file (ChatKit deletes the record next); another user's attachment is not found."""
        try:
            await self.store.attachment_row(attachment_id, context)
        except NotFoundError:
            raise NotFound("No such attachment.", details={"attachment_id": attachment_id}) from None
        await asyncio.to_thread(self._unlink, attachment_id)

    async def forget(self, attachment_ids: list[str], context: Owner) -> None:
        """A deleted thread's files."""
        for attachment_id in attachment_ids:
            await asyncio.to_thread(self._unlink, attachment_id)

    def _unlink(self, attachment_id: str) -> None:
        try:
            self.path(attachment_id).unlink()
        except (FileNotFoundError, NotFound):
            pass

    def _origin(self, context: Any) -> str:
        if self.base_url:
            return self.base_url
        scope = getattr(context, "scope", None) or {}
        headers = dict(scope.get("headers") or ())
        host = headers.get(b"host", b"127.0.0.1").decode("latin-1")
        return f"{scope.get('scheme', 'http')}://{host}"

    # ---- the upload URL ----------------------------------------------------------------------------------

    async def _by_token(self, attachment_id: str, token: str) -> Any:
        from sqlalchemy import select

        from chatgate.store.models import CHATKIT_ATTACHMENTS as A

        self.path(attachment_id)  # its shape
        async with self.store._tx() as conn:
            row = (await conn.execute(select(A).where(A.c.id == attachment_id))).first()
        if row is None or not row.token_digest or not secrets.compare_digest(row.token_digest, digest(token)):
            raise NotFound("No such attachment.", details={"attachment_id": attachment_id})
        return row

    async def receive(self, attachment_id: str, token: str, data: bytes) -> dict[str, Any]:
        """The upload: once, within the size limit, bytes that are what the record says."""
        row = await self._by_token(attachment_id, token)
        if row.uploaded:
            raise Conflict("This attachment was uploaded already.", details={"attachment_id": attachment_id})
        if len(data) > self.settings.max_bytes:
            raise PayloadTooLarge(
                f"An attachment may be {self.settings.max_bytes} bytes at most.",
                details={"field": "body", "max_bytes": self.settings.max_bytes},
            )
        if not looks_like(row.mime_type, data):
            raise BadRequest(f"The file is not {row.mime_type}.", details={"field": "body"})
        await asyncio.to_thread(self._write, attachment_id, data)
        owner = Owner(row.user_id)
        attachment = await self.store.load_attachment(attachment_id, owner)
        attachment.upload_descriptor = None
        await self.store.save_attachment(attachment, owner)
        await self.store.set_attachment(attachment_id, owner, uploaded=True, size=len(data))
        return {"id": attachment_id, "uploaded": True, "size": len(data)}

    async def read(self, attachment_id: str, token: str) -> tuple[bytes, str]:
        row = await self._by_token(attachment_id, token)
        if not row.uploaded:
            raise NotFound("This attachment has not been uploaded.", details={"attachment_id": attachment_id})
        return await asyncio.to_thread(self.path(attachment_id).read_bytes), row.mime_type

    def _write(self, attachment_id: str, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        final = self.path(attachment_id)
        temp = final.with_name(final.name + ".part-" + secrets.token_hex(4))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise

    # ---- what a message's attachments give the model --------------------------------------------------

    async def _uploaded(self, attachment_id: str, context: Owner) -> Any:
        row = await self.store.attachment_row(attachment_id, context)
        if not row.uploaded:
            raise BadRequest(
                "An attachment of the message was never uploaded.", details={"field": "params.input.attachments"}
            )
        return row

    async def images(self, item: UserMessageItem, context: Owner) -> list[dict[str, Any]]:
        parts = []
        for attachment in item.attachments:
            if attachment.type != "image":
                continue
            row = await self._uploaded(attachment.id, context)
            data = await asyncio.to_thread(self.path(attachment.id).read_bytes)
            url = f"data:{row.mime_type};base64,{base64.b64encode(data).decode()}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        return parts

    async def ingest(self, thread: ThreadMetadata, item: UserMessageItem, context: Owner) -> None:
        """The message's documents into the thread's private collection (waits for their ingestion)."""
        rag = self.service.services.rag
        files = [a for a in item.attachments if a.type == "file"]
        if not files or rag is None:
            return
        collection = await self.collection(thread.id, context, create=True)
        assert collection is not None
        jobs = []
        for attachment in files:
            row = await self._uploaded(attachment.id, context)
            if row.collection_id is not None:
                continue
            data = await asyncio.to_thread(self.path(attachment.id).read_bytes)
            name = _safe_name(attachment.name, row.mime_type)
            jobs.append((attachment.id, await rag.upload(collection, [Upload.of(name, data)])))
        for attachment_id, job in jobs:
            await self._wait(job.id)
            await self.store.set_attachment(attachment_id, context, collection_id=collection.id)
        thread.metadata[COLLECTION] = collection.id  # ChatKit saves the thread: later turns search it too

    async def collection(self, thread_id: str, context: Owner, *, create: bool = False) -> Any:
        rag = self.service.services.rag
        if rag is None:
            return None
        name = collection_name(thread_id)
        found = [r for r in await rag.repo.find_collections_named(name) if r.owner_id == context.user_id]
        if found:
            return found[0]
        if not create:
            return None
        try:
            return await rag.create_collection(
                name, context.user_id, "private", "Documents attached in a ChatKit thread."
            )
        except Conflict:  # made meanwhile by another request of the same thread
            return next(r for r in await rag.repo.find_collections_named(name) if r.owner_id == context.user_id)

    async def _wait(self, job_id: str) -> None:
        rag = self.service.services.rag
        assert rag is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + JOB_WAIT
        while loop.time() < deadline:
            job = await rag.jobs.get_job(job_id)
            if job is not None and job.status in ("done", "failed"):
                return
            await asyncio.sleep(0.1)


def _safe_name(name: str, mime: str) -> str:
    stem = re.sub(r"[^\w.-]+", "_", Path(name).name).strip("._") or "document"
    extension = EXTENSIONS.get(mime, "")
    return stem if stem.lower().endswith(extension) else stem + extension
