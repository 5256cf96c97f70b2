"""A broker, receiver or store address holding an IPv6 address without its brackets (`::1:9092`)
is refused saying to bracket it: it was "no host", "not HOST:PORT" with no word of why, or, for
--store, asyncpg's "invalid literal for int() with base 10: ':1:5432'"."""

from __future__ import annotations

import pytest

from keytrail.cli.console import bootstrap_problem, mqtt_problem
from keytrail.cli.key_store import store_url_problem
from keytrail.detect.hooks import webhook_url_problem

_BRACKETS = "an IPv6 address goes in brackets, as [::1]:PORT"


@pytest.mark.parametrize("bootstrap", ["::1:9092", "::1", "[::1]:9092,2001:db8::1:9092"])
def test_a_kafka_bootstrap_with_an_unbracketed_ipv6_address_says_to_bracket_it(bootstrap: str) -> None:
    assert bootstrap_problem(bootstrap) == f"--kafka: not HOST:PORT[,HOST:PORT…]: {bootstrap!r} ({_BRACKETS})"


def test_an_mqtt_url_with_an_unbracketed_ipv6_address_says_to_bracket_it() -> None:
    assert mqtt_problem("mqtt://::1:1883") == (f"--mqtt: not an MQTT URL: 'mqtt://::1:1883': {_BRACKETS} "
                                               "(use mqtt://HOST:PORT)")


def test_a_webhook_url_with_an_unbracketed_ipv6_address_says_to_bracket_it() -> None:
    assert webhook_url_problem("http://::1:8080/alarms") == _BRACKETS


@pytest.mark.parametrize("url", ["postgresql://postgres@::1:5432/keys", "postgresql://::1/keys",
                                 "postgres://app@[::1]:5432,2001:db8::7/keys?sslmode=require"])
def test_a_store_url_with_an_unbracketed_ipv6_address_says_to_bracket_it(url: str) -> None:
    assert store_url_problem(url) == "--store: an IPv6 address goes in brackets, as postgresql://USER@[::1]:5432/DB"


@pytest.mark.parametrize("address", ["[::1]:9092", "[2001:db8::1]:9092,kafka:9092"])
def test_bracketed_ipv6_addresses_are_taken(address: str) -> None:
    assert bootstrap_problem(address) is None
    assert mqtt_problem(f"mqtt://{address.split(',')[0]}") is None
    assert webhook_url_problem(f"http://{address.split(',')[0]}/") is None
    assert store_url_problem(f"postgresql://app@{address}/keys") is None
