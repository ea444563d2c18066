from chatgate.upstream.sse import DONE_EVENT, SSEDecoder, encode_data, error_event


def feed_all(chunks: list[bytes]) -> list:
    dec = SSEDecoder()
    events = []
    for c in chunks:
        events.extend(dec.feed(c))
    return events + dec.flush()


def test_single_events_and_done():
    events = feed_all([b'data: {"a":1}\n\ndata: [DONE]\n\n'])
    assert [e.data for e in events] == [b'{"a":1}', b"[DONE]"]
    assert events[1].is_done and not events[0].is_done


def test_multiline_data_is_joined_with_newlines():
    events = feed_all([b'data: {\ndata:  "a": 1\ndata: }\n\n'])
    assert events[0].data == b'{\n "a": 1\n}'


def test_comments_are_keepalives_not_data():
    events = feed_all([b": keep-alive\n\n", b"data: x\n\n"])
    assert events[0].data is None and events[0].comments == [b"keep-alive"]
    assert events[1].data == b"x"


def test_event_split_at_every_byte_boundary():
    stream = b'event: message\r\nid: 7\r\ndata: {"b":2}\r\n\r\n: ping\r\n\r\ndata: [DONE]\r\n\r\n'
    for cut in range(1, len(stream)):
        events = feed_all([stream[:cut], stream[cut:]])
        datas = [e.data for e in events if e.data is not None]
        assert datas == [b'{"b":2}', b"[DONE]"], cut
        assert events[0].event == "message" and events[0].id == "7"


def test_bare_cr_line_endings_and_no_space_after_colon():
    events = feed_all([b"data:abc\r\rdata:def\r\r"])
    assert [e.data for e in events] == [b"abc", b"def"]


def test_unterminated_last_event_is_flushed():
    events = feed_all([b"data: tail"])
    assert [e.data for e in events] == [b"tail"]


def test_retry_and_unknown_fields():
    events = feed_all([b"retry: 3000\nfoo: bar\ndata: z\n\n"])
    assert events[0].retry == 3000 and events[0].data == b"z"


def test_encode_round_trips_multiline():
    encoded = encode_data(b"line1\nline2")
    assert encoded == b"data: line1\ndata: line2\n\n"
    assert feed_all([encoded])[0].data == b"line1\nline2"


def test_error_event_shape():
    assert error_event({"error": {"message": "m"}}) == b'data: {"error":{"message":"m"}}\n\n'
    assert DONE_EVENT == b"data: [DONE]\n\n"
