"""`index:` in the config, as `fngate check` sees it."""

from __future__ import annotations

import pytest

from gateway.config.model import parse_config
from gateway.errors import ConfigError


def test_index_url_defaults_to_sqlite_and_takes_postgresql() -> None:
    assert parse_config({}).index.url == "sqlite"
    config = parse_config({"index": {"url": "postgresql://fngate@db:5432/fngate", "ack_wait": "5s"}})
    assert config.index.url.startswith("postgresql://") and config.index.ack_wait == 5.0
    assert parse_config({}).index.feeders == 2 and parse_config({"index": {"feeders": 3}}).index.feeders == 3


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ({"url": "mysql://db/fngate"}, "index.url: must be sqlite, sqlite:///path or postgresql://"),
        ({"url": "sqlite:///"}, "index.url: sqlite:/// needs a file path"),
        ({"ack_wait": "0s"}, "index.ack_wait: must be 1s..10m"),
        ({"feeders": 0}, "index.feeders: "),
        ({"feeders": 17}, "index.feeders: "),
        ({"bogus": 1}, "index.bogus: unknown key"),
    ],
)
def test_bad_index_settings_name_their_path(index: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"index": index})
    assert any(line.startswith(message) for line in caught.value.errors), caught.value.errors
