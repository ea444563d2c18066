"""The upload route's multipart body, read as it streams in, within the upload limits.

``server.max_body_bytes`` does not apply to the upload route: ``BodyLimit`` gives it its own, larger
limit (``rag.retrieval.upload_max_request_bytes``), and this reader enforces that limit on the whole
body and ``rag.retrieval.upload_max_bytes`` on each file while the body arrives, so an oversized upload
is refused (413, the unified body) as soon as it passes a limit, not after it is all stored. File parts
go to spooled temporary files (in memory up to 1 MiB each, then on disk); other fields are dropped.
Parsing is python-multipart's (the parser Starlette's own forms use).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from chatgate.errors import BadRequest, PayloadTooLarge
from chatgate.rag.jobs import Upload, safe_name

SPOOL = 1024 * 1024
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 100


@dataclass
class FilePart:
    filename: str
    file: SpooledTemporaryFile[bytes]
    size: int = 0
    pending: list[bytes] = field(default_factory=list)

    def upload(self) -> Upload:
        async def read() -> bytes:
            def whole() -> bytes:
                self.file.seek(0)
                return self.file.read()

            return await asyncio.to_thread(whole)

        return Upload(self.filename, self.size, read)


class UploadForm:
    """The file parts of an upload (``files`` or ``file`` fields); ``close()`` removes their temporary files."""

    def __init__(self, file_fields: tuple[str, ...], max_file_bytes: int, max_request_bytes: int, max_files: int):
        self.file_fields = file_fields
        self.max_file_bytes = max_file_bytes
        self.max_request_bytes = max_request_bytes
        self.max_files = max_files
        self.files: list[FilePart] = []
        self._received = 0
        self._parts = 0
        self._fields = 0
        self._current: FilePart | None = None
        self._discarding = 0  # bytes of the current non-file (or unwanted) part
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    def uploads(self) -> list[Upload]:
        return [f.upload() for f in self.files]

    def close(self) -> None:
        for f in self.files:
            with contextlib.suppress(OSError):
                f.file.close()

    async def read(self, headers: Mapping[str, str], stream: AsyncIterator[bytes]) -> None:
        _, params = parse_options_header(headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if not boundary:
            raise BadRequest("The upload could not be read: no multipart boundary.", details={"field": "files"})
        try:
            parser = MultipartParser(
                boundary,
                {
                    "on_part_begin": self._part_begin,
                    "on_part_data": self._part_data,
                    "on_header_field": self._header_field,
                    "on_header_value": self._header_value_cb,
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                },
            )
            async for chunk in stream:
                self._received += len(chunk)
                if self._received > self.max_request_bytes:
                    raise PayloadTooLarge(
                        f"The upload is larger than {self.max_request_bytes} bytes.",
                        details={"field": "files", "max_bytes": self.max_request_bytes},
                    )
                parser.write(chunk)
                await self._flush()
            parser.finalize()
        except FormParserError as exc:
            raise BadRequest(f"The upload could not be read: {exc}.", details={"field": "files"}) from None
        except ClientDisconnect:  # the client went away mid-upload: nothing is stored
            raise BadRequest("The upload was cut off before its end.", details={"field": "files"}) from None

    async def _flush(self) -> None:
        for f in self.files:
            if f.pending:
                data, f.pending = b"".join(f.pending), []
                await asyncio.to_thread(f.file.write, data)

    # -- python-multipart callbacks ----------------------------------------------------------------------

    def _part_begin(self) -> None:
        self._current = None
        self._discarding = 0
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_cb(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._parts += 1
        if b"filename" not in options or name not in self.file_fields:
            self._fields += 1
            if self._fields > MAX_FIELDS:
                raise BadRequest(f"Too many fields in the upload (at most {MAX_FIELDS}).", details={"field": "files"})
            return
        if len(self.files) >= self.max_files:
            raise BadRequest(f"Too many files in one upload (at most {self.max_files}).", details={"field": "files"})
        filename = options[b"filename"].decode("utf-8", "replace") or "upload"
        self._current = FilePart(filename, SpooledTemporaryFile(max_size=SPOOL))
        self.files.append(self._current)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is None:
            self._discarding += end - start
            if self._discarding > MAX_FIELD_BYTES:
                raise BadRequest(
                    f"A part of the upload other than its 'files' is larger than {MAX_FIELD_BYTES} bytes.",
                    details={"field": "files"},
                )
            return
        part.size += end - start
        if part.size > self.max_file_bytes:
            raise PayloadTooLarge(
                f"{safe_name(part.filename)} is larger than {self.max_file_bytes} bytes.",
                details={"field": "files", "max_bytes": self.max_file_bytes},
            )
        part.pending.append(data[start:end])
