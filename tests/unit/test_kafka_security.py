"""The Kafka security settings ($KEYTRAIL_KAFKA_*): what aiokafka is built with, and the one line a
setting that cannot work gives. TLS and mutual TLS against a real broker: tests/integration/test_kafka_security.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from keytrail.transport.kafka import kafka_problem
from keytrail.transport.kafka_security import (
    KafkaAccessRefused,
    KafkaSecurity,
    kafka_client_options,
    refusal,
    security_problem,
)
from tests.support.kafka_tls import Authority

SCRAM = {"KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KEYTRAIL_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
         "KEYTRAIL_KAFKA_SASL_USERNAME": "keytrail", "KEYTRAIL_KAFKA_SASL_PASSWORD": "pw-1234"}


def test_no_settings_is_plaintext_as_before() -> None:
    assert kafka_client_options({}) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "scram-sha-512"])
def test_sasl_ssl_gives_aiokafka_the_mechanism_credentials_and_a_verifying_context(mechanism: str) -> None:
    options = kafka_client_options({**SCRAM, "KEYTRAIL_KAFKA_SASL_MECHANISM": mechanism})
    context = options.pop("ssl_context")
    assert options == {"security_protocol": "SASL_SSL", "sasl_mechanism": mechanism.upper(),
                       "sasl_plain_username": "keytrail", "sasl_plain_password": "pw-1234"}
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_sasl_plaintext_has_no_tls_context() -> None:
    options = kafka_client_options({**SCRAM, "KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"})
    assert options["security_protocol"] == "SASL_PLAINTEXT" and "ssl_context" not in options


def test_the_password_is_read_from_its_file_and_never_shown(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-the-file\n")
    env = {**SCRAM, "KEYTRAIL_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw")}
    del env["KEYTRAIL_KAFKA_SASL_PASSWORD"]
    security = KafkaSecurity.from_environment(env)
    assert security.password == "from-the-file"
    assert "from-the-file" not in repr(security) + security.describe()


def test_mutual_tls_loads_the_client_certificate(tmp_path: Path) -> None:
    authority = Authority.make(tmp_path)
    options = kafka_client_options({
        "KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "SSL", "KEYTRAIL_KAFKA_CA_FILE": str(authority.ca),
        "KEYTRAIL_KAFKA_CERT_FILE": str(authority.client_cert), "KEYTRAIL_KAFKA_KEY_FILE": str(authority.client_key)})
    assert options["security_protocol"] == "SSL"
    trusted = [cert["subject"] for cert in options["ssl_context"].get_ca_certs()]
    assert trusted == [((("commonName", "keytrail test CA"),),)]


@pytest.mark.parametrize(("env", "said"), [
    ({"KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "TLS"},
     "$KEYTRAIL_KAFKA_SECURITY_PROTOCOL: 'TLS' is none of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({**SCRAM, "KEYTRAIL_KAFKA_SASL_MECHANISM": "GSSAPI"},
     "$KEYTRAIL_KAFKA_SASL_MECHANISM: 'GSSAPI' is none of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    ({**SCRAM, "KEYTRAIL_KAFKA_SASL_MECHANISM": ""}, "$KEYTRAIL_KAFKA_SASL_MECHANISM is not set: SASL_SSL needs"),
    ({**SCRAM, "KEYTRAIL_KAFKA_SASL_PASSWORD": ""},
     "neither $KEYTRAIL_KAFKA_SASL_PASSWORD_FILE nor $KEYTRAIL_KAFKA_SASL_PASSWORD is set: SCRAM-SHA-512 needs"),
    ({**SCRAM, "KEYTRAIL_KAFKA_SASL_USERNAME": ""}, "$KEYTRAIL_KAFKA_SASL_USERNAME is not set: SASL_SSL needs"),
    ({**SCRAM, "KEYTRAIL_KAFKA_SECURITY_PROTOCOL": ""},
     "$KEYTRAIL_KAFKA_SASL_MECHANISM is set but $KEYTRAIL_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"KEYTRAIL_KAFKA_SASL_USERNAME": "u", "KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "SSL"},
     "$KEYTRAIL_KAFKA_SASL_USERNAME is set but $KEYTRAIL_KAFKA_SECURITY_PROTOCOL is SSL"),
    ({"KEYTRAIL_KAFKA_CA_FILE": "/etc/hostname"},
     "$KEYTRAIL_KAFKA_CA_FILE is set but $KEYTRAIL_KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
    ({"KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "SSL", "KEYTRAIL_KAFKA_CA_FILE": "/nonexistent/ca.pem"},
     "$KEYTRAIL_KAFKA_CA_FILE /nonexistent/ca.pem: no such file"),
    ({"KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "SSL", "KEYTRAIL_KAFKA_CA_FILE": "/etc/hostname"},
     "$KEYTRAIL_KAFKA_CA_FILE /etc/hostname: not CA certificates in PEM"),
    ({"KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "SSL", "KEYTRAIL_KAFKA_KEY_FILE": "/etc/hostname"},
     "$KEYTRAIL_KAFKA_KEY_FILE is set without $KEYTRAIL_KAFKA_CERT_FILE"),
    ({**SCRAM, "KEYTRAIL_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pw"},
     "both $KEYTRAIL_KAFKA_SASL_PASSWORD_FILE and $KEYTRAIL_KAFKA_SASL_PASSWORD are set"),
])
def test_a_setting_that_cannot_work_is_one_line_naming_its_variable(env: dict[str, str], said: str) -> None:
    problem = security_problem(env)
    assert problem is not None and problem.startswith(said) and "\n" not in problem
    assert "pw-1234" not in problem


def test_a_client_certificate_that_is_not_one_is_named(tmp_path: Path) -> None:
    authority = Authority.make(tmp_path)
    problem = security_problem({"KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "SSL",
                                "KEYTRAIL_KAFKA_CERT_FILE": str(authority.ca),
                                "KEYTRAIL_KAFKA_KEY_FILE": str(authority.client_key)})
    assert problem is not None
    assert problem.startswith(f"$KEYTRAIL_KAFKA_CERT_FILE {authority.ca} with "
                              f"$KEYTRAIL_KAFKA_KEY_FILE {authority.client_key}: not a certificate")


def test_a_password_file_with_an_empty_first_line_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("\n")
    env = {**SCRAM, "KEYTRAIL_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw"), "KEYTRAIL_KAFKA_SASL_PASSWORD": ""}
    said = f"$KEYTRAIL_KAFKA_SASL_PASSWORD_FILE {tmp_path / 'pw'}: the file's first line is empty"
    assert security_problem(env) == said


def test_a_broker_refusing_the_credentials_is_said_so_not_out_of_reach() -> None:
    # The real broker's answer (SASL_AUTHENTICATION_FAILED) was logged by aiokafka and then raised
    # as "Unable to bootstrap": keytrail said "no broker answered there".
    refused = refusal([SaslAuthenticationFailed("Authentication failed")], KafkaSecurity.from_environment(SCRAM))
    assert isinstance(refused, KafkaAccessRefused) and isinstance(refused, KafkaConnectionError)
    assert kafka_problem(refused) == ("the broker refused keytrail's SASL credentials (SCRAM-SHA-512 as 'keytrail'): "
                                      "check $KEYTRAIL_KAFKA_SASL_USERNAME and the password")


def test_a_broker_out_of_reach_is_no_refusal() -> None:
    assert refusal([ConnectionRefusedError(111, "Connection refused")], KafkaSecurity.from_environment(SCRAM)) is None


def test_a_plain_listener_hanging_up_on_the_tls_hello_is_named() -> None:
    # Apache Kafka reads a TLS hello as a request larger than socket.request.max.bytes and hangs up.
    eof = ssl.SSLEOFError(8, "[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol")
    eof.reason = "UNEXPECTED_EOF_WHILE_READING"
    refused = refusal([eof], KafkaSecurity.from_environment({"KEYTRAIL_KAFKA_SECURITY_PROTOCOL": "SSL"}))
    assert refused is not None and str(refused) == (
        "TLS with the broker failed (UNEXPECTED_EOF_WHILE_READING): is that a TLS listener? If not, set "
        "$KEYTRAIL_KAFKA_SECURITY_PROTOCOL to PLAINTEXT or SASL_PLAINTEXT")


async def test_the_kafka_alarm_hook_whose_ca_file_went_missing_is_down_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Checked at start, the file can still go (a CA rotated by hand): the hook's delivery raised
    # KafkaSecurityError, which its retries (KafkaError, OSError) did not take for a hook down.
    from keytrail.detect.engine import Detector
    from keytrail.detect.sinks import HookDown
    from keytrail.detect.sinks.kafka import KafkaSink
    from tests.unit.detect.records import T0, denied, key_arn, user

    [alarm] = Detector().process([denied("Decrypt", T0, key_arn(1), user("eve"))])
    monkeypatch.setenv("KEYTRAIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KEYTRAIL_KAFKA_CA_FILE", str(tmp_path / "rotated-away.pem"))
    sink = KafkaSink("127.0.0.1:9", attempts=1, backoff=0.001)
    with pytest.raises(HookDown, match=r"KEYTRAIL_KAFKA_CA_FILE .*rotated-away.pem: no such file"):
        await sink.deliver(alarm)
