"""How every Kafka client of keytrail reaches a secured cluster: TLS, mutual TLS and SASL
(PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), read from the environment, so that a password is never on a
command line (`--kafka BOOTSTRAP` stays the address alone) and serve's children, which inherit the
environment, connect as serve does. docs/operations.md, "Kafka security", says how to set it for
Amazon MSK, Confluent Cloud and a cluster with client certificates.

`kafka_client_options()` is what each client (producer, consumer, admin) is built with; a setting
that cannot work raises `KafkaSecurityError` with one line naming the variable, which the commands
check before they start (`security_problem`).
"""

from __future__ import annotations

import asyncio.constants
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

__all__ = ["CA_FILE_ENV", "CERT_FILE_ENV", "KEY_FILE_ENV", "MECHANISM_ENV", "PASSWORD_ENV", "PASSWORD_FILE_ENV",
           "PROTOCOL_ENV", "USERNAME_ENV", "KafkaAccessRefused", "KafkaSecurity", "KafkaSecurityError",
           "kafka_client_options", "refusal", "security_problem"]

PROTOCOL_ENV = "KEYTRAIL_KAFKA_SECURITY_PROTOCOL"
MECHANISM_ENV = "KEYTRAIL_KAFKA_SASL_MECHANISM"
USERNAME_ENV = "KEYTRAIL_KAFKA_SASL_USERNAME"
PASSWORD_ENV = "KEYTRAIL_KAFKA_SASL_PASSWORD"
PASSWORD_FILE_ENV = "KEYTRAIL_KAFKA_SASL_PASSWORD_FILE"
CA_FILE_ENV = "KEYTRAIL_KAFKA_CA_FILE"
CERT_FILE_ENV = "KEYTRAIL_KAFKA_CERT_FILE"
KEY_FILE_ENV = "KEYTRAIL_KAFKA_KEY_FILE"

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")  # Kafka's security.protocol values
# GSSAPI and OAUTHBEARER are left out: Kerberos needs a system library, OAuth a token provider.
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
# How long a closing TLS connection to a broker waits for its close_notify. aiokafka's stop awaits
# each connection's close, and asyncio gave that 30 s: `detect --kafka` took 30 s to stop on a broker
# gone silent (a host down, a partition), past Docker's 10 s grace, whose SIGKILL loses the alarms
# still queued; over plain TCP it stopped at once. The reply is one record, a round trip: nothing
# is lost by the drop, as the Kafka protocol acknowledged everything before.
TLS_CLOSE_SECONDS = 2.0


class KafkaSecurityError(ValueError):
    """A Kafka security setting that cannot work, in one line naming its variable (never a secret)."""


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """The Kafka security settings: Kafka's own names (security.protocol, sasl.mechanism…)."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None  # else the system's trust store (MSK's and Confluent Cloud's public CAs)
    cert_file: Path | None = None  # mutual TLS: the client certificate (PEM), its key beside it or in key_file
    key_file: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @classmethod
    def from_environment(cls, env: Mapping[str, str] = os.environ) -> KafkaSecurity:
        """The settings `env` gives, checked: a mechanism, user or file given where the protocol
        does not use it is refused, not ignored (else keytrail ships in clear text to a cluster
        the operator believes it reaches over TLS)."""
        protocol = (env.get(PROTOCOL_ENV) or "PLAINTEXT").upper()
        if protocol not in PROTOCOLS:
            raise KafkaSecurityError(f"${PROTOCOL_ENV}: {protocol!r} is none of {', '.join(PROTOCOLS)}")
        security = cls(protocol, mechanism=_mechanism(env, protocol), username=env.get(USERNAME_ENV) or None,
                       password=_password(env), ca_file=_path(env, CA_FILE_ENV),
                       cert_file=_path(env, CERT_FILE_ENV), key_file=_path(env, KEY_FILE_ENV))
        security._check()
        return security

    def _check(self) -> None:
        if not self.uses_sasl and (given := _given(self.username, USERNAME_ENV, self.password, PASSWORD_ENV)):
            raise KafkaSecurityError(f"${given} is set but ${PROTOCOL_ENV} is {self.protocol}: "
                                     "set it to SASL_SSL (or SASL_PLAINTEXT) to use SASL")
        if not self.uses_tls and (given := _given(self.ca_file, CA_FILE_ENV, self.cert_file, CERT_FILE_ENV,
                                                  self.key_file, KEY_FILE_ENV)):
            raise KafkaSecurityError(f"${given} is set but ${PROTOCOL_ENV} is {self.protocol}: "
                                     "set it to SSL (or SASL_SSL) to use TLS")
        if self.uses_sasl and not self.username:
            raise KafkaSecurityError(f"${USERNAME_ENV} is not set: {self.protocol} needs a user name")
        if self.uses_sasl and not self.password:
            raise KafkaSecurityError(f"neither ${PASSWORD_FILE_ENV} nor ${PASSWORD_ENV} is set: "
                                     f"{self.mechanism} needs a password")
        if self.key_file and not self.cert_file:
            raise KafkaSecurityError(f"${KEY_FILE_ENV} is set without ${CERT_FILE_ENV}: give the client certificate")

    def client_options(self) -> dict[str, Any]:
        """The keyword arguments of aiokafka's producer, consumer and admin client for these settings."""
        options: dict[str, Any] = {"security_protocol": self.protocol}
        if self.uses_tls:
            options["ssl_context"] = self.ssl_context()
            _close_tls_promptly()
        if self.uses_sasl:
            options.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                           sasl_plain_password=self.password)
        return options

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that verifies the broker's certificate and name: against the CA file if
        given, else the system's trust store; with the client certificate for mutual TLS."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise KafkaSecurityError(f"${CA_FILE_ENV} {self.ca_file}: {_file_problem(error, 'CA certificates')}"
                                     ) from None
        if self.cert_file:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except OSError as error:
                raise KafkaSecurityError(f"${CERT_FILE_ENV} {self.cert_file}"
                                         + (f" with ${KEY_FILE_ENV} {self.key_file}" if self.key_file else "")
                                         + f": {_file_problem(error, 'a certificate and its unencrypted key')}"
                                         ) from None
        return context

    def describe(self) -> str:
        """The settings in words for a log line or an error (no password)."""
        said = self.protocol
        if self.uses_sasl:
            said += f", {self.mechanism} as {self.username!r}"
        if self.cert_file:
            said += ", with a client certificate"
        return said


def kafka_client_options(env: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """What every aiokafka client keytrail makes is built with, besides its bootstrap servers."""
    return KafkaSecurity.from_environment(env).client_options()


def security_problem(env: Mapping[str, str] = os.environ) -> str | None:
    """None if the Kafka security settings can be used (files read, contexts built), else the
    one-line complaint: checked as a command starts, before any client tries them."""
    try:
        kafka_client_options(env)
    except KafkaSecurityError as error:
        return str(error)
    return None


def _close_tls_promptly() -> None:
    """Make the TLS connections asyncio's loop opens from now on wait `TLS_CLOSE_SECONDS` for the
    peer's close_notify. aiokafka opens its connections with no `ssl_shutdown_timeout` (and takes
    none to pass on), so asyncio's default is the one place to set it; a connection given its own
    timeout (serve's HTTPS, api/tls_handshake.py) keeps it, and uvloop has a default of its own."""
    asyncio.constants.SSL_SHUTDOWN_TIMEOUT = TLS_CLOSE_SECONDS


def _mechanism(env: Mapping[str, str], protocol: str) -> str | None:
    mechanism = (env.get(MECHANISM_ENV) or "").upper() or None
    if mechanism is not None and mechanism not in MECHANISMS:
        raise KafkaSecurityError(f"${MECHANISM_ENV}: {mechanism!r} is none of {', '.join(MECHANISMS)}")
    if mechanism is not None and not protocol.startswith("SASL_"):
        raise KafkaSecurityError(f"${MECHANISM_ENV} is set but ${PROTOCOL_ENV} is {protocol}: "
                                 "set it to SASL_SSL (or SASL_PLAINTEXT) to use SASL")
    if mechanism is None and protocol.startswith("SASL_"):
        raise KafkaSecurityError(f"${MECHANISM_ENV} is not set: {protocol} needs one of {', '.join(MECHANISMS)} "
                                 "(Amazon MSK: SCRAM-SHA-512; Confluent Cloud: PLAIN)")
    return mechanism


def _password(env: Mapping[str, str]) -> str | None:
    """The password: from the file $KEYTRAIL_KAFKA_SASL_PASSWORD_FILE names (its first line), else the variable."""
    named = env.get(PASSWORD_FILE_ENV)
    if named and env.get(PASSWORD_ENV):
        raise KafkaSecurityError(f"both ${PASSWORD_FILE_ENV} and ${PASSWORD_ENV} are set: keep one")
    if not named:
        return env.get(PASSWORD_ENV) or None
    try:
        lines = Path(named).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise KafkaSecurityError(f"${PASSWORD_FILE_ENV} {named}: {_file_problem(error, 'a password')}") from None
    if not lines or not lines[0]:
        raise KafkaSecurityError(f"${PASSWORD_FILE_ENV} {named}: the file's first line is empty")
    return lines[0]


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name)
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise KafkaSecurityError(f"${name} {value}: no such file")
    return path


def _given(*pairs: object) -> str | None:
    """The name of the first variable of (value, name) pairs whose value is set."""
    values, names = pairs[::2], pairs[1::2]
    return next((str(name) for value, name in zip(values, names, strict=True) if value), None)


def _file_problem(error: Exception, holds: str) -> str:
    """Why a file could not be used, without its content (an ssl error may quote none, but say so)."""
    if isinstance(error, ssl.SSLError):
        return f"not {holds} in PEM ({error.reason or error})"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return f"not {holds} ({type(error).__name__})"


class KafkaAccessRefused(KafkaConnectionError):  # type: ignore[misc]  # aiokafka.errors is untyped
    """The broker answered, but would not let keytrail in: its TLS certificate did not verify, TLS
    failed, or it refused the SASL credentials. A KafkaConnectionError, so that whatever waits out
    a broker out of reach (the shipper, the alarm hook) waits this out too; its text says which.
    `silent`: it took the TCP connection but never answered the TLS hello, as a plain listener does,
    and as a TLS broker too slow to answer would: likely, not certain, a refusal."""

    silent: bool = False

    def __str__(self) -> str:  # aiokafka's errors put their class name first
        return str(self.args[0])


def refusal(errors: Sequence[BaseException], security: KafkaSecurity) -> KafkaAccessRefused | None:
    """What the errors of the connections a client tried say about getting in, if anything (None:
    the broker is out of reach, or failed otherwise)."""
    for error in errors:
        if said := _refused(error, security):
            refused = KafkaAccessRefused(said)
            refused.silent = isinstance(error, TimeoutError)
            return refused
    return None


def _refused(error: BaseException, security: KafkaSecurity) -> str | None:
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"the broker's TLS certificate did not verify ({error.verify_message}): "
                + (f"is ${CA_FILE_ENV} the CA that signed it?" if security.ca_file else
                   f"give the CA that signed it in ${CA_FILE_ENV}"))
    if isinstance(error, ssl.SSLError):
        return f"TLS with the broker failed ({error.reason or error}): {_tls_hint(error, security)}"
    if isinstance(error, SaslAuthenticationFailed) or _scram_refused(error):
        return (f"the broker refused keytrail's SASL credentials ({security.mechanism} as {security.username!r}): "
                f"check ${USERNAME_ENV} and the password")
    if isinstance(error, UnsupportedSaslMechanismError):
        return (f"the broker does not take SASL {security.mechanism} on this listener: "
                f"check ${MECHANISM_ENV} and ${PROTOCOL_ENV}")
    if isinstance(error, TimeoutError) and security.uses_tls:  # a plain-TCP listener waits for more bytes
        return (f"the broker did not answer keytrail's TLS hello in time: is it a TLS listener (if not, set "
                f"${PROTOCOL_ENV} to PLAINTEXT or SASL_PLAINTEXT), and is it running?")
    if isinstance(error, KafkaConnectionError) and "closed" in str(error):
        return _hung_up(security)
    return None


def _hung_up(security: KafkaSecurity) -> str:
    """A broker that closes the connection as it opens: one whose listener wants what keytrail did
    not offer (TLS, a client certificate, SASL), or that does not take the SASL mechanism offered
    (tansu hangs up then). A TLS listener that wants a client certificate refuses one missing with
    an alert that reaches aiokafka as the connection closed."""
    if security.uses_sasl:
        return (f"the broker hung up as keytrail authenticated ({security.mechanism} over {security.protocol}): "
                f"does that listener take ${MECHANISM_ENV} {security.mechanism}"
                + (", and a client without a certificate?" if security.uses_tls and not security.cert_file else "?"))
    if security.uses_tls and security.cert_file:
        return (f"the broker hung up after the TLS handshake: did it refuse the client certificate "
                f"(${CERT_FILE_ENV}), or does the listener want SASL (${PROTOCOL_ENV} SASL_SSL)?")
    if security.uses_tls:
        return (f"the broker hung up after the TLS handshake: a listener that wants a client certificate "
                f"(${CERT_FILE_ENV}, ${KEY_FILE_ENV}) or SASL (${PROTOCOL_ENV} SASL_SSL) does")
    return (f"the broker hung up as keytrail connected over {security.protocol}: "
            f"a listener that wants TLS or SASL does; set ${PROTOCOL_ENV}")


def _tls_hint(error: ssl.SSLError, security: KafkaSecurity) -> str:
    reason = str(error.reason or "")
    if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
        return (f"the broker wants a client certificate: set ${CERT_FILE_ENV} and ${KEY_FILE_ENV}"
                if not security.cert_file else "did the broker refuse the client certificate?")
    # A plain listener answers a TLS hello with Kafka bytes, or hangs up (Apache Kafka reads the hello
    # as a request over socket.request.max.bytes): an EOF in the handshake.
    if any(said in reason for said in ("WRONG_VERSION_NUMBER", "RECORD_LAYER", "PACKET_LENGTH", "EOF")):
        return f"is that a TLS listener? If not, set ${PROTOCOL_ENV} to PLAINTEXT or SASL_PLAINTEXT"
    return f"check ${PROTOCOL_ENV} and the broker's listener"


def _scram_refused(error: BaseException) -> bool:
    """aiokafka reads a SCRAM server's `e=…` answer (RFC 5802: the credentials refused, which some
    brokers send instead of Kafka's SASL_AUTHENTICATION_FAILED) as if it held a signature, and fails
    with KeyError 'v', or ValueError for a signature that does not match."""
    if not isinstance(error, KeyError | ValueError):
        return False
    trace = error.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    return trace is not None and trace.tb_frame.f_code.co_name == "process_server_final_message"
