"""The streamer's live view (``nvrxlog.streamer.live``): subscriptions, what is encoded, with no socket."""

from __future__ import annotations

import orjson

from nvrxlog.streamer.live import LiveView, encoded


def test_subscriptions_follow_xpub_messages() -> None:
    """A first subscription adds its topic, the last unsubscription removes it, anything else is ignored."""
    live = LiveView()
    live.subscription(b"\x01rec")
    live.subscription(b"\x01hb")
    live.subscription(b"junk")
    assert live.watchers == {b"rec", b"hb"}
    live.subscription(b"\x00hb")
    assert live.watchers == {b"rec"}


def test_records_are_watched_by_a_topic_they_start_with() -> None:
    """Records count as watched for ``rec`` or any prefix of it (``b""``: everything), not for ``hb`` alone."""
    live = LiveView()
    assert not live.watching_records()
    live.subscription(b"\x01hb")
    assert not live.watching_records()
    for topic in (b"", b"r", b"rec"):
        live.watchers = {topic}
        assert live.watching_records()


def test_a_record_too_deep_for_orjson_is_encoded_bounded() -> None:
    """A record nested past orjson's limit is shown bounded; the others in the message as they are."""
    deep: list = []
    for _ in range(300):
        deep = [deep]
    shown = orjson.loads(encoded([{"msg": "plain"}, {"msg": "x", "x": deep}]))
    assert shown[0] == {"msg": "plain"}
    assert shown[1]["msg"] == "x" and isinstance(shown[1]["x"], str)
