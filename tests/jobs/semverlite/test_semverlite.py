from __future__ import annotations

import pytest
from semverlite import Version, max_satisfying, parse


@pytest.mark.parametrize(
    "text",
    [
        "1.0.0",
        "0.0.1",
        "10.20.30",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0+20130313144700",
        "1.0.0-beta+exp.sha.5114f85",
        "v2.3.4",
    ],
)
def test_round_trip(text: str) -> None:
    assert str(parse(text)) == text.removeprefix("v")


@pytest.mark.parametrize("text", ["1", "1.2", "01.2.3", "1.2.3-", "1.2.3-01", "a.b.c", ""])
def test_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)


def test_precedence_follows_the_spec() -> None:
    chain = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
    ]
    versions = [parse(v) for v in chain]
    assert sorted(reversed(versions)) == versions
    assert parse("1.0.0+a") == parse("1.0.0+b")
    assert len({parse("1.0.0+a"), parse("1.0.0")}) == 1


def test_bump() -> None:
    assert parse("1.2.3").bump("major") == Version(2, 0, 0)
    assert str(parse("1.2.3").bump("minor")) == "1.3.0"
    assert str(parse("1.2.3-rc.1").bump("patch")) == "1.2.3"
    with pytest.raises(ValueError):
        parse("1.2.3").bump("micro")


def test_max_satisfying() -> None:
    versions = ["1.2.0", "1.2.9", "1.3.0", "1.10.1", "2.0.0", "2.1.0-beta"]
    assert max_satisfying(versions, "^1.2.0") == "1.10.1"
    assert max_satisfying(versions, "~1.2.0") == "1.2.9"
    assert max_satisfying(versions, ">=1.3.0 <2.0.0") == "1.10.1"
    assert max_satisfying(versions, "^0.1.0") is None
    assert max_satisfying(versions, "^2.0.0") == "2.0.0"
