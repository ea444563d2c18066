"""The personalised system prompt."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chatgate.sessions.personalise import Personaliser


def test_personaliser_fills_from_variables_and_time_zone():
    p = Personaliser("Hi {name}, it is {time} in {timezone}; language {language}.")
    when = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    text = p.prompt({"USER_NAME": "Ann", "CURRENT_TIMEZONE": "Asia/Tokyo", "USER_LANGUAGE": "ja"}, None, when)
    assert text == "Hi Ann, it is 21:00 in Asia/Tokyo; language ja."
    merged = p.apply([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}], "P")
    assert merged[0]["content"] == "P\n\nBe brief." and len(merged) == 2
    assert p.apply([{"role": "user", "content": "q"}], "P")[0] == {"role": "system", "content": "P"}
    with pytest.raises(ValueError, match="unknown placeholders"):
        Personaliser("{password}")
