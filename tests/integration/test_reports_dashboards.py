"""Every metric the Grafana dashboards query is exported by a real `keytrail serve` at GET /metrics."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from tests.integration.keystores.wrapping import import_material
from tests.support.audit_records import ACCOUNT, KEY_ARN
from tests.support.http import http_get
from tests.support.server import KeytrailServer
from tests.support.services import free_port, kafka_broker
from tests.support.waits import eventually_blocking
from tests.unit.test_deploy import DOCUMENTED_FAMILY

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def dashboards_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_build", ROOT / "dashboards/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported_families(text: str) -> dict[str, str]:
    """Metric family → type, from the `# TYPE` lines of Prometheus text format 0.0.4."""
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))


def test_exported_families_parse_type_lines() -> None:
    text = "# HELP a_total x\n# TYPE a_total counter\na_total{x=\"1\"} 2\n# TYPE b gauge\nb 1\n"
    assert exported_families(text) == {"a_total": "counter", "b": "gauge"}


def test_every_dashboard_metric_is_exported_by_the_server(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client("alice")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.encrypt(KeyId=key, Plaintext=b"dashboards")
    status, body = fresh_server.get("/metrics")
    assert status == 200, "GET /metrics must be served by keytrail serve"
    families = exported_families(body.decode())
    build = dashboards_build()
    missing = sorted(name for name in build.METRICS if name not in families)
    assert missing == [], f"dashboards query metrics the server does not export: {', '.join(missing)}"
    wrong = {name: families[name] for name, (kind, _, _) in build.METRICS.items() if families[name] != kind}
    assert wrong == {}, f"metric types differ from dashboards/build.py METRICS: {wrong}"
    labels = exported_labels(body.decode())
    differ = {name: sorted(labels[name]) for name, (_, names, _) in build.METRICS.items()
              if name in labels and labels[name] != set(names)}
    assert differ == {}, f"labels differ from dashboards/build.py METRICS (which the panels read): {differ}"


def exported_labels(text: str) -> dict[str, set[str]]:
    """Metric family → the label names of its series (a histogram's by its _bucket series, `le`)."""
    labels: dict[str, set[str]] = {}
    for series, body in re.findall(r"^([a-z_:][a-z0-9_:]*)\{([^}]*)\} ", text, flags=re.M):
        family = re.sub(r"_(bucket|sum|count)$", "", series) if series.endswith("_bucket") else series
        labels.setdefault(family, set()).update(re.findall(r'(\w+)="', body))
    return labels


def test_exported_labels_read_each_family_s_label_names() -> None:
    text = 'a_total{op="x",outcome="y"} 1\nh_bucket{le="0.1"} 2\nh_count 2\nb 1\n'
    assert exported_labels(text) == {"a_total": {"op", "outcome"}, "h": {"le"}}


def test_the_documented_metrics_are_those_the_server_exports(fresh_server: KeytrailServer) -> None:
    """docs/metrics.md lists every family GET /metrics serves, with its type, and no other: the
    unit tests check the alerts against that table (tests/unit/test_deploy.py), so a row naming a
    family no process serves would let an alert over it pass, empty. A serve with its detector
    serves every family `consume` and `detect` do (their /metrics are parts of its own)."""
    kms = fresh_server.client("alice")
    kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"documented")
    families = exported_families(fresh_server.get("/metrics")[1].decode())
    section = (ROOT / "docs/metrics.md").read_text().split("## Prometheus", 1)[1].split("\n## ", 1)[0]
    documented = dict(re.findall(rf"^\| `({DOCUMENTED_FAMILY})` \| (\w+) \|", section, flags=re.M))
    assert documented == families
    assert documented_families("serve") == families


def documented_families(process: str) -> dict[str, str]:
    """Family → type of the rows of docs/metrics.md's table whose "served by" names `process`."""
    section = (ROOT / "docs/metrics.md").read_text().split("## Prometheus", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(rf"^\| `({DOCUMENTED_FAMILY})` \| (\w+) \| [^|]* \| ([^|]*) \|", section, flags=re.M)
    assert len(rows) == len(re.findall(rf"^\| `({DOCUMENTED_FAMILY})` \|", section, flags=re.M)), \
        "docs/metrics.md: a row without its served-by column"
    return {name: kind for name, kind, served in rows if f"`{process}`" in served}


def test_documented_families_read_the_served_by_column() -> None:
    assert documented_families("consume")["keytrail_pipeline_consumer_lag"] == "gauge"
    assert "keytrail_healthy" in documented_families("serve") and "keytrail_healthy" not in documented_families(
        "consume")
    assert documented_families("serve")["process_start_time_seconds"] == "gauge"


def test_the_documented_metrics_of_a_standalone_consumer_are_those_it_exports(tmp_path: Path) -> None:
    """`keytrail consume --metrics-port` serves the families docs/metrics.md marks `consume`, and
    no other: the page listed the node's own families it leaves out, and missed six of them."""
    record = {"eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
              "eventTime": "2026-01-05T12:00:00Z", "eventID": "e-1", "awsRegion": "us-east-1",
              "eventType": "AwsApiCall", "recipientAccountId": ACCOUNT,
              "userIdentity": {"type": "IAMUser", "arn": f"arn:aws:iam::{ACCOUNT}:user/eve", "accountId": ACCOUNT},
              "resources": [{"ARN": KEY_ARN}], "errorCode": "AccessDenied"}
    (tmp_path / "log.json.gz").write_bytes(gzip.compress(json.dumps({"Records": [record]}).encode()))
    subprocess.run([sys.executable, "-m", "keytrail", "audit", "import", str(tmp_path / "log.json.gz"),
                    "--data-dir", str(tmp_path / "node")], check=True, capture_output=True, timeout=120)
    port = free_port()
    with _running("consume", "--data-dir", str(tmp_path / "node"), "--metrics-port", str(port)):
        text = _scrape(port, "keytrail_kms_requests_total{")  # the imported record counted
    assert exported_families(text) == documented_families("consume")
    assert 'keytrail_event_log_reader_held{reader="consumer"} 0' in text.splitlines()  # following the embedded log


def test_the_documented_metrics_of_a_standalone_detector_are_those_it_exports(tmp_path: Path) -> None:
    """`keytrail detect --kafka … --metrics-port` serves the families docs/metrics.md marks `detect`."""
    port = free_port()
    with kafka_broker() as bootstrap, _running("detect", "--kafka", bootstrap, "--data-dir", str(tmp_path),
                                               "--metrics-port", str(port)):
        text = _scrape(port, "# TYPE keytrail_")
    assert exported_families(text) == documented_families("detect")


@contextmanager
def _running(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`keytrail <args>` running for the block, stopped with SIGTERM after it (exit 0)."""
    proc = subprocess.Popen([sys.executable, "-m", "keytrail", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()


def _scrape(port: int, holding: str) -> str:
    """GET /metrics on `port`, once it answers with `holding` in it."""
    text = ""

    def answered() -> bool:
        nonlocal text
        try:
            status, _, text = http_get(f"http://127.0.0.1:{port}/metrics")
        except OSError:  # not listening yet
            return False
        return status == 200 and holding in text

    eventually_blocking(answered, what=f"GET /metrics on {port} holding {holding!r}", timeout=90)
    return text


def test_denied_calls_are_counted_per_principal(fresh_server: KeytrailServer) -> None:
    """The "denied calls by principal" panel: role sessions count as their role."""
    alice = fresh_server.client("alice")
    blob = alice.encrypt(KeyId=alice.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"]
    for who in ("bob", "bob", "carol"):
        with pytest.raises(fresh_server.client(who).exceptions.ClientError):
            fresh_server.client(who).decrypt(CiphertextBlob=blob)
    family = 'keytrail_kms_denied_by_principal_total{operation="Decrypt",principal="arn:aws:iam::'
    expected = {family + '111122223333:user/bob"} 2', family + '444455556666:user/carol"} 1'}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = set(fresh_server.get("/metrics")[1].decode().splitlines())
        if expected <= lines:
            break
        time.sleep(0.2)
    assert expected <= lines


#: Families a fresh serve exports without a sample, each with the test that scrapes one of their
#: samples from a real serve (a custom key store on a SoftHSM2 token its test removes).
_SAMPLED_ELSEWHERE = {
    "keytrail_custom_key_store_failed_calls_total": "tests/integration/keystores/test_custom_key_stores.py",
}


def test_every_metric_the_alerts_read_is_exported_with_the_labels_they_read(fresh_server: KeytrailServer) -> None:
    """deploy/alerts.yml reads only families a real serve exports, and only labels their series
    carry (tests/unit/test_deploy.py checks the same against docs/metrics.md): an alert over a
    family or a label that is not there is an empty expression, and never fires."""
    from tests.unit.test_deploy import _TARGET_LABELS, _labels_used, alert_rules, metric_names

    kms = fresh_server.client("alice")
    blob = kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"alerts")["CiphertextBlob"]
    expiring = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]  # its material's ValidTo has a sample
    import_material(kms, expiring, os.urandom(32), ExpirationModel="KEY_MATERIAL_EXPIRES",
                    ValidTo=datetime.now(UTC) + timedelta(days=3))
    with pytest.raises(fresh_server.client("bob").exceptions.ClientError):  # a denied call
        fresh_server.client("bob").decrypt(CiphertextBlob=blob)
    assert fresh_server.post("/", {})[0] >= 400  # unsigned: refused before authentication
    wanted = set().union(*(metric_names(rule["expr"]) for rule in alert_rules())) - {"up"}
    deadline = time.monotonic() + 20
    while True:  # the consumer counts the calls 1-3 s later
        text = fresh_server.get("/metrics")[1].decode()
        if "keytrail_kms_denied_requests_total{" in text or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    families, labels = exported_families(text), exported_labels(text)
    assert sorted(wanted - set(families)) == []
    # Samples only once an HSM failed a call: its `store` label is scraped by that test instead.
    labels |= {name: {"store"} for name, test in _SAMPLED_ELSEWHERE.items() if (ROOT / test).is_file()}
    carried = {name: labels.get(name, set()) | _TARGET_LABELS for name in families} | {"up": set(_TARGET_LABELS)}
    wrong = {}
    for rule in alert_rules():
        expr = rule["expr"]
        used = _labels_used(expr, "") - set().union(*(carried[name] for name in metric_names(expr)))
        for name, matchers in re.findall(r"\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}", expr):
            [family] = metric_names(name)
            used |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers)) - carried[family]
        if used:
            wrong[rule["alert"]] = sorted(used)
    assert wrong == {}
