"""Addresses as error messages may repeat them: never a user name, password or token."""

from __future__ import annotations

import pytest

from keytrail.transport.addresses import redacted, url_problem


@pytest.mark.parametrize(("address", "shown"), [
    ("mqtt://broker:1883", "mqtt://broker:1883"),
    ("broker:9092,other:9092", "broker:9092,other:9092"),
    ("mqtt://user:pw@broker:1883", "mqtt://***@broker:1883"),
    ("mqtt://user:p/w@d@broker:1883", "mqtt://***@broker:1883"),  # the last "@" ends the user info
    ("mqtt://user:p://w@broker", "mqtt://***@broker"),  # the first "://" ends the scheme
    ("mqtt://broker:1883?qos=2", "mqtt://broker:1883?qos=2"),
    ("user:pw@broker:9092", "***@broker:9092"),
])
def test_redacted_hides_user_info(address: str, shown: str) -> None:
    assert redacted(address) == shown


@pytest.mark.parametrize(("url", "shown"), [
    ("https://alerts/hook?token=t0k#frag", "https://alerts/hook?***"),
    ("https://alerts/hook#frag", "https://alerts/hook#***"),
    ("https://user:pw@alerts/hook?token=t0k", "https://***@alerts/hook?***"),
])
def test_redacted_without_query_hides_a_webhook_token(url: str, shown: str) -> None:
    assert redacted(url, query=False) == shown


def test_url_problem_does_not_quote_a_password_taken_for_host_and_port() -> None:
    problem = url_problem("mqtt://user:pw/SECRET@broker:1883", ("mqtt",))
    assert problem is not None and "pw" not in problem and "percent-encoded" in problem
    assert url_problem("https://alerts:1/hook?from=a@b", ("https",)) is None  # an "@" after a good host
