"""Store URLs and the help texts: one definition each, which every user shares."""

from __future__ import annotations

import pytest

from taskschedctl import cli
from taskschedd import config, redact, store
from taskschedd.storeurl import DEFAULT_URL, is_mongodb, is_sqlite, looks_like_mongodb


@pytest.mark.parametrize(
    ("url", "mongo", "sqlite", "lookalike"),
    [
        ("mongodb://h/db", True, False, False),
        ("mongodb+srv://h/db", True, False, False),
        ("sqlite:///var/x.db", False, True, False),
        ("/var/x.db", False, True, False),
        ("mongodb:/u:pw@h/db", False, True, True),
        ("mongodb//u:pw@h/db", False, True, True),
        ("sqlite://mongodb.example/db", False, True, True),
        ("MongoDB://h/db", False, False, True),
        ("redis://h", False, False, False),
    ],
)
def test_which_store_a_url_names(url: str, mongo: bool, sqlite: bool, lookalike: bool) -> None:
    assert (is_mongodb(url), is_sqlite(url), looks_like_mongodb(url)) == (mongo, sqlite, lookalike)


def test_one_definition_of_each_constant() -> None:
    assert store.DEFAULT_URL is DEFAULT_URL
    assert config.Config().store == DEFAULT_URL
    assert DEFAULT_URL in cli.EPILOG  # spelled out there: --help imports no taskschedd
    assert redact.url_password("mongodb+srv://u:pw@h/db") == "pw"
