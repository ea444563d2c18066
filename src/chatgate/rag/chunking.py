"""A ``ParsedDocument`` to token-bounded ``Chunk``s that follow its structure.

Rules, per section (a chunk never spans two sections, so its heading path and page are exact):

1. The section is cut into paragraphs (blank lines), paragraphs into sentences, and a sentence
   longer than ``size`` into runs of words of at most ``size - overlap`` tokens (a "word" longer
   than that, into runs of characters).
   Every piece is counted once, in one batch per document.
2. Pieces are packed in order into chunks of at most ``size`` tokens. A paragraph that does not fit
   in what is left of the current chunk but fits in a chunk of its own starts a new chunk rather
   than being split; a longer paragraph is split between sentences.
3. A new chunk of the same section starts with about ``overlap`` tokens from the end of the previous
   one: its last whole sentences when they fit, else its last words; less when the next paragraph
   needs the room.
4. Each chunk's text is counted once more as a whole (``Chunk.tokens``); the rare chunk that comes out
   over ``size`` (a tokenizer merging across a join) gives back its last piece to the next chunk.

``text`` is the raw text (paragraphs joined by a blank line); title, heading path and page are
fields of the chunk, for the indexer to add to what it embeds or shows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from chatgate.rag.types import Chunk, ParsedDocument

_PARAGRAPHS = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends at . ! ? or an ellipsis (and closing quotes/brackets), before whitespace and a
# capital, digit, quote or bracket; CJK full stops end one wherever they are.
_SENTENCE_END = re.compile(
    r"[.!?\u2026]+[\"'\u201d\u2019)\]]*\s+(?=[\"'\u201c\u2018(\[]?[A-Z0-9\u00c0-\u00de])|[\u3002\uff01\uff1f]"
)

PARAGRAPH_JOIN = "\n\n"
SENTENCE_JOIN = " "


@runtime_checkable
class BatchCounter(Protocol):
    """What the chunker uses of :class:`~chatgate.tokens.TokenCounter`."""

    def count(self, text: str, model: str | None = None) -> int: ...

    def count_batch(self, texts: Sequence[str], model: str | None = None) -> list[int]: ...


@dataclass(slots=True)
class _Piece:
    text: str
    tokens: int
    para: int  # index of the paragraph in its section


class Chunker:
    """Splits documents into chunks of at most ``size`` tokens, ``overlap`` tokens carried over."""

    def __init__(self, count: Callable[[str], int] | BatchCounter, size: int, overlap: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        if not 0 <= overlap < size:
            raise ValueError("overlap must be at least 0 and less than size")
        if isinstance(count, BatchCounter):
            counter = count
            self._count: Callable[[str], int] = counter.count
            self._count_many: Callable[[Sequence[str]], list[int]] = counter.count_batch
        else:
            one = count
            self._count = one
            self._count_many = lambda texts: [one(t) for t in texts]
        self.size = size
        self.overlap = overlap

    def chunk(self, doc: ParsedDocument) -> list[Chunk]:
        # Pass 1: every section's paragraphs cut into sentences, all counted in one batch.
        layouts: list[list[list[str]]] = []
        flat: list[str] = []
        for section in doc.sections:
            paras = [[s for s in _sentences(p) if s] for p in _PARAGRAPHS.split(section.text.strip())]
            paras = [p for p in paras if p]
            layouts.append(paras)
            for p in paras:
                flat.extend(p)
        counts = iter(self._count_many(flat)) if flat else iter(())

        chunks: list[Chunk] = []
        for section, paras in zip(doc.sections, layouts, strict=True):
            pieces: list[_Piece] = []
            para_tokens: list[int] = []
            for i, sentences in enumerate(paras):
                total = 0
                for sentence in sentences:
                    n = next(counts)
                    if n <= self.size:
                        pieces.append(_Piece(sentence, n, i))
                        total += n
                    else:
                        for part in self._split_long(sentence, n):
                            pieces.append(_Piece(part.text, part.tokens, i))
                            total += part.tokens
                para_tokens.append(total)
            for text, tokens in self._pack(pieces, para_tokens):
                chunks.append(
                    Chunk(
                        text=text,
                        ordinal=len(chunks),
                        tokens=tokens,
                        title=doc.title,
                        headings=section.headings,
                        page=section.page,
                    )
                )
        return chunks

    # -- packing -----------------------------------------------------------------------------------

    def _pack(self, pieces: list[_Piece], para_tokens: list[int]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        cur: list[_Piece] = []
        cur_tokens = 0
        carried = 0  # how many leading pieces of cur are overlap from the previous chunk
        size = self.size
        i = 0
        while True:
            if i == len(pieces):
                if len(cur) <= carried:
                    return out
                text, tokens, given_back = self._close(cur, carried)
                out.append((text, tokens))
                if not given_back:
                    return out
                # The last pieces did not fit after all: they go round again after a shorter overlap.
                i -= given_back
                budget = max(0, min(self.overlap, size - pieces[i].tokens - 1))
                cur = self._overlap(cur[: len(cur) - given_back], budget)
                carried, cur_tokens = len(cur), _estimate(cur)
                continue
            piece = pieces[i]
            join = 0 if not cur else (1 if cur[-1].para != piece.para else 0)
            starts_para = i == 0 or pieces[i - 1].para != piece.para
            para = para_tokens[piece.para]
            if starts_para and cur_tokens + join + para > size and para <= size and len(cur) > carried:
                # The whole paragraph fits a chunk of its own: start one rather than split it.
                need = para
            elif cur_tokens + join + piece.tokens > size:
                need = piece.tokens
            else:
                cur.append(piece)
                cur_tokens += join + piece.tokens
                i += 1
                continue
            if len(cur) > carried:
                # Each close emits at least one piece that was not overlap: the loop always advances.
                text, tokens, given_back = self._close(cur, carried)
                out.append((text, tokens))
                i -= given_back
                cur = self._overlap(cur[: len(cur) - given_back], max(0, min(self.overlap, size - need - 1)))
            else:  # only overlap so far, and the next piece does not fit beside it: carry less
                cur = self._overlap(cur, max(0, min(_estimate(cur), size - need - 1)))
            carried, cur_tokens = len(cur), _estimate(cur)

    def _close(self, cur: list[_Piece], carried: int) -> tuple[str, int, int]:
        """The chunk's text and real token count, giving back trailing pieces while it is over size."""
        end = len(cur)
        while True:
            text = _join(cur[:end])
            tokens = self._count(text)
            if tokens <= self.size or end - carried <= 1:
                return text, tokens, len(cur) - end
            end -= 1

    def _overlap(self, cur: list[_Piece], budget: int) -> list[_Piece]:
        """The tail of ``cur`` to repeat at the start of the next chunk: at most ``budget`` tokens."""
        if budget <= 0 or not cur:
            return []
        tail: list[_Piece] = []
        used = 0
        for piece in reversed(cur):
            join = 1 if tail and tail[0].para != piece.para else 0
            if used + piece.tokens + join > budget:
                break
            tail.insert(0, piece)
            used += piece.tokens + join
        if tail:
            return tail
        # The last sentence alone is longer than the budget: carry its last words instead.
        last = cur[-1]
        words = last.text.split()
        per_word = last.tokens / max(1, len(words))
        take = min(len(words) - 1, int(budget / max(per_word, 1e-9)))
        while take > 0:
            text = " ".join(words[-take:])
            n = self._count(text)
            if n <= budget:
                return [_Piece(text, n, last.para)]
            take = min(take - 1, int(take * budget / n))
        return []

    # -- long sentences ----------------------------------------------------------------------------

    def _split_long(self, sentence: str, tokens: int) -> list[_Piece]:
        """A sentence over ``size`` tokens as runs of words (or characters) of at most ``size - overlap``
        tokens each, so that the overlap from one run fits beside the next."""
        words = sentence.split()
        if len(words) <= 1:
            return self._split_chars(sentence, tokens)
        limit = self.size - self.overlap
        counts = self._count_many(words)
        out: list[_Piece] = []
        run: list[str] = []
        run_tokens = 0
        for word, n in zip(words, counts, strict=True):
            if n > limit:
                if run:
                    out.append(_Piece(" ".join(run), run_tokens, 0))
                    run, run_tokens = [], 0
                out.extend(self._split_chars(word, n))
                continue
            if run and run_tokens + n > limit:
                out.append(_Piece(" ".join(run), run_tokens, 0))
                run, run_tokens = [], 0
            run.append(word)
            run_tokens += n
        if run:
            out.append(_Piece(" ".join(run), run_tokens, 0))
        # Counted word by word, a run can differ from its real count: recount them all in one batch.
        real = self._count_many([p.text for p in out])
        fixed: list[_Piece] = []
        for piece, n in zip(out, real, strict=True):
            if n <= limit:
                fixed.append(_Piece(piece.text, n, 0))
            else:
                fixed.extend(self._split_chars(piece.text, n))
        return fixed

    def _split_chars(self, text: str, tokens: int) -> list[_Piece]:
        """Text without spaces (a URL, base64, CJK) in slices of at most ``size - overlap`` tokens."""
        out: list[_Piece] = []
        limit = self.size - self.overlap
        chars_per_token = len(text) / max(1, tokens)
        start = 0
        while start < len(text):
            step = max(1, int(limit * chars_per_token * 0.9))
            while True:
                part = text[start : start + step]
                n = self._count(part)
                if n <= limit or step == 1:
                    break
                step = max(1, int(step * limit / n * 0.95))
            out.append(_Piece(part, n, 0))
            start += len(part)
        return out


def _sentences(paragraph: str) -> list[str]:
    out: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(paragraph):
        end = m.end()
        out.append(paragraph[start:end].strip())
        start = end
    out.append(paragraph[start:].strip())
    return out


def _join(pieces: Sequence[_Piece]) -> str:
    parts: list[str] = []
    for k, piece in enumerate(pieces):
        if k:
            parts.append(PARAGRAPH_JOIN if pieces[k - 1].para != piece.para else SENTENCE_JOIN)
        parts.append(piece.text)
    return "".join(parts)


def _estimate(pieces: Sequence[_Piece]) -> int:
    """Tokens of ``_join(pieces)`` from the pieces' counts: a paragraph break costs about one token."""
    total = 0
    for k, piece in enumerate(pieces):
        total += piece.tokens + (1 if k and pieces[k - 1].para != piece.para else 0)
    return total
