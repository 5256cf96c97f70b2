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
    assert url_problem("https://alerts/hook?from=a@b", ("https",)) is None  # an "@" after a good host


@pytest.mark.parametrize("url", [
    "https://hook-user:8443#SECRET@alerts.example.com/keytrail",  # urlsplit: bob:8443, fragment
    "https://hook-user:12?SECRET@alerts.example.com/keytrail",
    "https://hook-user:1/SECRET@alerts.example.com/keytrail",
    "https://alerts:1/hook?from=a@b",  # the same shape: which "@" ends the user info is a guess
])
def test_url_problem_refuses_a_password_that_urlsplit_would_cut_into_a_port(url: str) -> None:
    """The password's digits before its unencoded "#", "?" or "/" pass for a port: the URL would
    reach another host, with the rest of the password in its path. It is refused, unquoted."""
    problem = url_problem(url, ("https",))
    assert problem is not None and "SECRET" not in problem and "8443" not in problem
    assert "%23" in problem and "%40" in problem


@pytest.mark.parametrize("url", [
    "https://hook-user:p%23ss@alerts.example.com:8443/keytrail",
    "https://alerts.example.com:8443/keytrail?from=a%40b",
    "https://org.webhook.office.com/webhookb2/1d2e@72f9-86f1/IncomingWebhook/x/y",  # Teams: no port
    "https://[::1]:8443/hook",
])
def test_url_problem_accepts_encoded_passwords_and_an_at_sign_that_cannot_end_user_info(url: str) -> None:
    assert url_problem(url, ("https",)) is None
