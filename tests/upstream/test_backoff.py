from datetime import UTC, datetime
from email.utils import format_datetime

from chatgate.upstream.backoff import Backoff, parse_retry_after


def test_full_jitter_bounds_grow_then_cap():
    top = Backoff(base=0.5, cap=8.0, rand=lambda: 0.999999)
    assert [round(top.delay(n), 3) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    bottom = Backoff(base=0.5, cap=8.0, rand=lambda: 0.0)
    assert bottom.delay(3) == 0.0


def test_jitter_is_random_within_ceiling():
    b = Backoff(base=0.5, cap=8.0)
    samples = [b.delay(2) for _ in range(500)]
    assert all(0 <= s <= 2.0 for s in samples)
    assert len({round(s, 6) for s in samples}) > 400  # actually jittered


def test_retry_after_is_honoured_up_to_the_cap():
    b = Backoff(base=0.5, cap=8.0, rand=lambda: 0.0)
    assert b.delay(0, retry_after=3.0) == 3.0
    assert b.delay(0, retry_after=60.0) == 8.0
    high = Backoff(base=0.5, cap=8.0, rand=lambda: 0.999999)
    assert high.delay(3, retry_after=1.0) > 3.9  # never less than the jittered backoff


def test_parse_retry_after_forms():
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    date = format_datetime(datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(date, now=lambda: now) == 5.0
