"""The pipeline endpoint's HTTP parts: opting out of the cache, the rate-limit and error headers."""

from __future__ import annotations

from chatgate.api.endpoint import opted_out
from chatgate.api.errors import error_headers
from chatgate.api.responses import rate_headers
from chatgate.errors import Rate, RateLimited, UpstreamUnavailable


def test_cache_control_and_pragma_opt_out() -> None:
    assert opted_out({"cache-control": "no-cache"}) is True
    assert opted_out({"cache-control": "max-age=0, No-Store"}) is True
    assert opted_out({"cache-control": "no-cache=set-cookie"}) is True
    assert opted_out({"pragma": "no-cache"}) is True
    assert opted_out({"cache-control": "max-age=60"}) is False
    assert opted_out({"x-no-cache": "no-cache"}) is False
    assert opted_out({}) is False


def test_rates_become_openais_headers() -> None:
    headers = dict(rate_headers([Rate("requests", 60, 59, 0.5), Rate("tokens", 1000, 10, 12.25)]))
    assert headers[b"x-ratelimit-limit-requests"] == b"60" and headers[b"x-ratelimit-remaining-requests"] == b"59"
    assert headers[b"x-ratelimit-reset-requests"] == b"0.500s" and headers[b"x-ratelimit-reset-tokens"] == b"12.250s"
    assert rate_headers([Rate("widgets", 1, 1, 0.0)]) == []  # a unit OpenAI has no headers for


def test_a_429_says_when_to_retry_and_which_limit_refused() -> None:
    error = RateLimited(
        "slow down", retry_after=2.2, blocked=Rate("tokens", 100, 3, 41.5), rates=(Rate("requests", 5, 4, 1.0),)
    )
    headers = dict(error_headers(error))
    assert headers[b"retry-after"] == b"3" and headers[b"retry-after-ms"] == b"2200"
    assert headers[b"x-ratelimit-limit"] == b"100" and headers[b"x-ratelimit-remaining"] == b"3"
    assert headers[b"x-ratelimit-reset"] == b"42" and headers[b"x-ratelimit-remaining-requests"] == b"4"
    unavailable = UpstreamUnavailable("none up", retry_after=0.2)
    assert dict(error_headers(unavailable)) == {b"retry-after": b"1"}  # at least a second
