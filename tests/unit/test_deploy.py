"""The deployment files hold together: docker-compose.yml is valid Compose and runs real keytrail
commands, Prometheus scrapes the serve nodes, the consumer and the detector, Grafana is provisioned
with the generated dashboards, its alerting rules read only what keytrail serves and name their runbook,
and docs/contracts.md covers every section of the shared contracts page."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

from tests.unit.reports.commands import cli_commands

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


def keytrail_services() -> dict[str, list[str]]:
    """Service name → command, for the services built from this repository."""
    return {name: service["command"] for name, service in compose()["services"].items()
            if service.get("image") == "keytrail:local"}


def dashboards_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_build", ROOT / "dashboards/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_file_follows_the_compose_specification() -> None:
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)  # the draft its $schema names
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert errors == []


def test_compose_runs_the_whole_topology() -> None:
    services = compose()["services"]
    images = {name: str(service.get("image", "")) for name, service in services.items()}
    assert images["kafka"].startswith("apache/kafka:") and "KAFKA_PROCESS_ROLES" in services["kafka"]["environment"]
    assert {"mosquitto", "postgres", "prometheus", "grafana"} <= set(services)
    commands = [command[0] for command in keytrail_services().values()]
    assert sorted(commands) == ["consume", "detect", "serve", "serve"]


def test_keytrail_services_get_longer_than_their_own_stop_takes_before_docker_kills_them() -> None:
    """Docker's default is 10 s, then SIGKILL: a node stopping while a dependency is away (its
    children's 15 s, the hooks' 10 s drain) was killed before its closing digest."""
    services = compose()["services"]
    assert keytrail_services()
    for name in keytrail_services():
        grace = str(services[name].get("stop_grace_period", "10s"))
        assert grace.endswith("s") and int(grace[:-1]) >= 20, f"{name}: stop_grace_period {grace}"


def test_kafka_keeps_its_log_on_its_volume() -> None:
    """The apache/kafka image writes its log to /tmp/kraft-combined-logs unless KAFKA_LOG_DIRS says
    otherwise: the audit topic and the consumers' committed offsets would then live in the
    container, lost when it is recreated, while the kafka-data volume stayed empty."""
    kafka = compose()["services"]["kafka"]
    mounted = {volume.split(":")[1] for volume in kafka["volumes"] if volume.split(":")[0] == "kafka-data"}
    assert kafka["environment"].get("KAFKA_LOG_DIRS") in mounted


def test_published_ports_are_on_loopback_only() -> None:
    """The KMS nodes answer to the example secrets of deploy/principals.toml (kms:* for the admin),
    Mosquitto takes anonymous clients, Grafana anonymous viewers: Docker publishes a bare
    "4599:4599" on every interface of the host (past its firewall), so all of them were open to
    the network before anyone had changed a secret, which the guide says to do first."""
    published = {name: service.get("ports", []) for name, service in compose()["services"].items()}
    assert {name: ports for name, ports in published.items()
            if any(not str(port).startswith("127.0.0.1:") for port in ports)} == {}


def test_one_detector_judges_the_whole_topic() -> None:
    """The API nodes leave detection to the standalone detector: otherwise each node would raise
    its own copy of every alarm."""
    nodes = {name: command for name, command in keytrail_services().items() if command[0] == "serve"}
    assert len(nodes) == 2  # keytrail-1 and keytrail-2
    for name, command in nodes.items():
        assert "--no-detector" in command and "--kafka" in command, name


@functools.cache
def help_text(command: str) -> str:
    result = subprocess.run([sys.executable, "-m", "keytrail", command, "--help"], capture_output=True, text=True,
                            timeout=120, env={"COLUMNS": "250", "PATH": "/usr/bin:/bin", **_pythonpath()})
    assert result.returncode == 0, f"keytrail {command} --help failed: {result.stderr[-2000:]}"
    return result.stdout


def _pythonpath() -> dict[str, str]:
    import os

    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


@pytest.mark.parametrize("service", sorted(keytrail_services()))
def test_every_service_runs_a_real_keytrail_command_with_real_options(service: str) -> None:
    command = keytrail_services()[service]
    assert command[0] in cli_commands(), f"{service}: `keytrail {command[0]}` is not a keytrail command"
    options = [arg.split("=", 1)[0] for arg in command[1:] if arg.startswith("--")]
    text = help_text(command[0])
    missing = [option for option in options if not re.search(rf"{re.escape(option)}\b", text)]
    assert missing == [], f"{service}: `keytrail {command[0]}` has no option {', '.join(missing)}"


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_audit_topic_has_the_same_partitions_whichever_service_makes_it() -> None:
    """A node creates keytrail.audit.v1 with --kafka-partitions (default 3), but consume and detect
    start as soon as Kafka is healthy, before the nodes (which wait for PostgreSQL too), and their
    subscription has the broker create the topic with its own num.partitions (6): the topology got
    6 partitions or 3 depending on who came first, and with them how far the consumer group and the
    detector scale."""
    broker = str(compose()["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"])
    nodes = {name: command for name, command in keytrail_services().items() if command[0] == "serve"}
    [default] = re.findall(r"--kafka-partitions N .*?\(default:\s+(\d+)\)", help_text("serve"), flags=re.S)
    made = {name: _option(command, "--kafka-partitions") if "--kafka-partitions" in command else default
            for name, command in nodes.items()}
    assert nodes and made == dict.fromkeys(nodes, broker)


def _scrape_jobs() -> dict[str, set[str]]:
    """deploy/prometheus.yml: job name → its targets."""
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in config["scrape_configs"])
    return {job["job_name"]: {t for group in job["static_configs"] for t in group["targets"]}
            for job in config["scrape_configs"]}


def test_prometheus_scrapes_every_serve_node_the_consumer_and_the_detector_on_their_ports() -> None:
    targets = set().union(*_scrape_jobs().values())
    services = keytrail_services()
    serve = {f"{name}:{_option(command, '--port')}" for name, command in services.items() if command[0] == "serve"}
    standalone = {f"{name}:{_option(command, '--metrics-port')}" for name, command in services.items()
                  if command[0] in ("consume", "detect")}
    assert len(standalone) == 2 and targets == serve | standalone
    for name, command in services.items():
        if command[0] in ("consume", "detect"):  # on all of the container's interfaces, for Prometheus
            assert _option(command, "--metrics-host") == "0.0.0.0", name


def _consumer_job() -> str:
    """The Prometheus job that scrapes compose's standalone consumer, and only it."""
    [(job, targets)] = [(job, targets) for job, targets in _scrape_jobs().items()
                        if any(t.startswith("consume:") for t in targets)]
    assert targets == {t for t in targets if t.startswith("consume:")}  # a job of its own
    return job


def _queries_of(family: str) -> list[str]:
    build = dashboards_build()
    return [expr for _, _, _, panel_queries, _, _ in build.PANELS for expr, _ in panel_queries
            if family in build.metric_names(expr)]


def test_dashboard_totals_do_not_count_the_nodes_calls_a_second_time_from_the_consumer() -> None:
    """The standalone consumer serves the request families of every node's calls, read from Kafka;
    each node serves those of its own calls: a total over every job counts each call twice."""
    job = _consumer_job()
    queries = _queries_of("keytrail_kms_requests_total") + _queries_of("keytrail_kms_denied_requests_total")
    assert queries and all(f'job!="{job}"' in query for query in queries), queries


def _panel_query(title: str) -> str:
    [query] = [expr for panel, _, _, queries, _, _ in dashboards_build().PANELS if panel == title
               for expr, _ in queries]
    return query


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_the_denial_panels_count_a_series_first_value_as_prometheus_evaluates_them(tmp_path: Path) -> None:
    """A series made at its first event, at 1 (a denial by a new principal), was no increase to
    Prometheus: "Denied calls by principal" showed 0 for a principal denied once, 1.25 for one denied
    twice. The panels' queries, evaluated by Prometheus's own rule engine (`promtool test rules`)."""
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": "by_principal", "expr": _panel_query("Denied calls by principal")},
        {"record": "denied_1h", "expr": _panel_query("Denied calls (1h)")}]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    denied = 'keytrail_kms_denied_by_principal_total{{job="keytrail-1",principal="{}",operation="Decrypt"}}'
    per_operation = 'keytrail_kms_denied_requests_total{{job="keytrail-1",operation="{}"}}'
    test = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            # A sample a minute from 0m to 80m: there all along; first denied at 70m (once, twice). The
            # node answered every scrape (`up`): a new series counts where it did.
            {"series": denied.format("old"), "values": " ".join(["5"] * 70 + ["6"] * 11)},
            {"series": denied.format("once"), "values": " ".join(["_"] * 70 + ["1"] * 11)},
            {"series": denied.format("twice"), "values": " ".join(["_"] * 70 + ["1"] + ["2"] * 10)},
            {"series": per_operation.format("Decrypt"), "values": " ".join(["_"] * 70 + ["1"] * 11)},
            {"series": 'up{job="keytrail-1"}', "values": " ".join(["1"] * 81)},
        ],
        "promql_expr_test": [
            {"expr": "by_principal", "eval_time": "72m", "exp_samples": [
                {"labels": f'by_principal{{principal="{who}"}}', "value": value}
                for who, value in (("old", 1), ("once", 1), ("twice", 2))]},
            {"expr": "by_principal", "eval_time": "77m", "exp_samples": [  # their window passed: 0 each
                {"labels": f'by_principal{{principal="{who}"}}', "value": 0} for who in ("old", "once", "twice")]},
            {"expr": "denied_1h", "eval_time": "72m", "exp_samples": [{"labels": "denied_1h", "value": 1}]},
        ],
    }]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


#: (what it shows, the from-zero counters' samples, up's, process_start_time_seconds', {eval time: the panels' value})
#: one minute a sample. Both counters count from zero at each start of serve.
FROM_ZERO_PANEL_CASES: list[tuple[str, str, str, str, dict[str, int]]] = [
    ("120 in the node's first 10 minutes, none after, Prometheus down from 60m to 80m: 0, not its total",
     "0+12x10 120x49 _x20 120x30", "1x59 _x20 1x30", "0x59 _x20 0x30", {"58m": 0, "82m": 0}),
    ("the same node out of Prometheus's reach from 60m to 80m (a network partition): 0",
     "0+12x10 120x48 stale _x19 120x30", "1x59 0x20 1x30", "0x59 _x20 0x30", {"82m": 0}),
    ("12 at 61m, right after a restart at 60m: 12 for the window, then 0",
     "_x61 12x30", "1x59 0 1x30", "0x59 _ 3605x30", {"62m": 12, "65m": 12, "67m": 0}),
    ("12 at 61m, after a restart that followed 20 minutes down (no scrape answered a window ago): 12, then 0",
     "_x61 12x30", "1x39 0x21 1x30", "0x39 _x21 3605x30", {"62m": 12, "64m": 12, "67m": 0}),
]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
@pytest.mark.parametrize("case", [case[0] for case in FROM_ZERO_PANEL_CASES])
def test_the_panels_of_from_zero_counters_take_no_since_start_total_after_a_gap_in_the_scrapes(
        case: str, tmp_path: Path) -> None:
    """"Denied calls by principal" and "Refused before authentication" read counters `serve` counts
    from zero at each start: a node that kept running while Prometheus did not scrape it came back at
    its since-start totals, which the panels took whole as new, while a restarted node's first
    values are new indeed. Evaluated by `promtool test rules` over the series a node serves."""
    [(_, counted, up, started, expected)] = [c for c in FROM_ZERO_PANEL_CASES if c[0] == case]
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": "by_principal", "expr": _panel_query("Denied calls by principal")},
        {"record": "refused", "expr": _panel_query("Refused before authentication")}]}]}
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    eve = "arn:aws:iam::111122223333:user/eve"
    series = [_series("keytrail_kms_denied_by_principal_total", f',operation="Decrypt",principal="{eve}"', counted),
              _series("keytrail_kms_unauthenticated_total", _BAD_SIGNATURE, counted),
              _series("up", "", up), _series("process_start_time_seconds", "", started)]
    checks = [{"expr": record, "eval_time": at, "exp_samples": [{"labels": f"{record}{{{labels}}}", "value": value}]}
              for at, value in expected.items()
              for record, labels in (("by_principal", f'principal="{eve}"'),
                                     ("refused", f'instance="node-1:4599"{_BAD_SIGNATURE}'))]
    test = {"rule_files": ["rules.yml"], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": checks}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cost_panels_take_the_systems_cost_from_the_standalone_consumer_not_a_sum_over_the_nodes() -> None:
    """A node's consumer prices the events of its own log only, and a key's lifecycle is spread over
    the nodes: a key created on keytrail-1 whose deletion was scheduled and cancelled on keytrail-2
    is billed by both (keytrail-2 from the ScheduleKeyDeletion, as for a key created before its
    logs), so a sum over the nodes counts its key-months twice. The consumer reading Kafka sees all
    of them; the nodes' sum stands in only where Prometheus scrapes no such consumer (one node)."""
    job = _consumer_job()
    cost = r"keytrail_kms_cost_usd\{([^}]*)\}"
    queries = _queries_of("keytrail_kms_cost_usd")
    assert queries  # the cost panels are there to check
    for query in queries:
        consumer, *rest = re.findall(rf"(\w+) by \(account\) \({cost}\)(?: unless on\(\) up\{{([^}}]*)\}})?", query)
        assert consumer == ("max", f'job="{job}"', ""), query  # its replicas share a data dir: each reports all
        assert rest == [("sum", f'job!="{job}"', f'job="{job}"')], query  # the nodes, only without a consumer
        assert len(re.findall(cost, query)) == 2, query
        # One or the other (`or`), never the two added (the stat panel totals the accounts).
        assert re.fullmatch(r"(sum\()?max by .* or \(sum by .*\)(?(1)\))", query), query


def test_the_key_inventory_is_not_counted_once_per_node() -> None:
    """Every node reports keytrail_kms_keys of the one key store they share (compose's PostgreSQL):
    summed over the nodes, each key counted twice."""
    queries = [expr for _, _, _, targets, _, _ in dashboards_build().PANELS for expr, _ in targets
               if "keytrail_kms_keys" in expr]
    assert queries and all(re.fullmatch(r"max by \(state\) \(keytrail_kms_keys\)", q) for q in queries), queries


def test_the_alarm_panels_read_what_compose_s_detector_exports() -> None:
    """Compose's nodes run --no-detector: the alarm counters come only from the standalone
    detector, which must serve them (on all of its container's interfaces, for Prometheus) under
    the name the alarm panels query."""
    from keytrail.cli.metrics_endpoint import render_alarm_counts

    build = dashboards_build()
    queried = {name for _, _, _, queries, _, _ in build.PANELS for expr, _ in queries
               for name in build.metric_names(expr) if "alarm" in name}
    [detect] = [command for command in keytrail_services().values() if command[0] == "detect"]
    assert _option(detect, "--metrics-host") == "0.0.0.0" and "--metrics-port" in detect
    exported = {line.split()[2] for line in render_alarm_counts({}, ["unused-key"]).splitlines()
                if line.startswith("# TYPE")}
    assert queried and queried <= exported, (queried, exported)


def test_mounted_files_exist_in_the_repository() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
    assert (ROOT / "deploy/Dockerfile").is_file()


def test_the_image_copies_every_file_the_package_build_reads() -> None:
    """pyproject.toml's readme and license-files, the sources and the schemas src/keytrail/schemas
    links to: a file the COPY lines leave out is missing from the image's keytrail (setuptools
    only warns of a license file it does not find: the image had no License text)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    copied = {source for line in re.findall(r"^COPY (.+)$", (ROOT / "deploy/Dockerfile").read_text(), flags=re.M)
              for source in line.split()[:-1]}
    assert sorted({"pyproject.toml", project["readme"], *project["license-files"], "src", "schemas"} - copied) == []


ROOT_KEY_SETUP = ("docs/getting-started.md", "deploy/secrets/README.md", "docker-compose.yml")


def test_the_root_key_secret_is_readable_by_the_image_user() -> None:
    """Compose outside Swarm bind-mounts a file secret with its host owner and mode (its `uid`,
    `gid` and `mode` are ignored): a 0600 root.key of the host user is unreadable to the image's
    user, and every node stops at start. So the image user has a fixed uid, and every place that
    tells how to make root.key gives the file to that uid."""
    user = re.search(r"useradd [^\n]*--uid (\d+)[^\n]* keytrail\b", (ROOT / "deploy/Dockerfile").read_text())
    assert user, "deploy/Dockerfile: the keytrail user needs a fixed --uid"
    for page in ROOT_KEY_SETUP:
        text = (ROOT / page).read_text()
        assert "> deploy/secrets/root.key" in text and f"chown {user.group(1)} deploy/secrets/root.key" in text, page


def test_only_the_api_nodes_are_given_the_root_key_and_the_key_store_password() -> None:
    """consume and detect read audit events and never unseal a key, as serve's own children, which
    it starts without these: compose gave them the root key secret and $PGPASSWORD all the same, so
    a leak of their files or environment leaked the key that seals every key's material."""
    from keytrail.children import STORE_SECRETS
    from keytrail.kms.sealing import ROOT_KEY_ENV, ROOT_KEY_FILE_ENV

    secrets = {ROOT_KEY_ENV, ROOT_KEY_FILE_ENV, *STORE_SECRETS}
    services = compose()["services"]
    given = {name: (set(services[name].get("environment", {})), services[name].get("secrets", []))
             for name in keytrail_services()}
    nodes = {name for name, command in keytrail_services().items() if command[0] == "serve"}
    assert nodes and all(environment <= secrets and ROOT_KEY_FILE_ENV in environment and mounted
                         for name, (environment, mounted) in given.items() if name in nodes), given
    [root_key] = {mounted[0] for name, (_, mounted) in given.items() if name in nodes}
    assert {services[name]["environment"][ROOT_KEY_FILE_ENV] for name in nodes} == {f"/run/secrets/{root_key}"}
    assert {name: (sorted(environment & secrets), mounted) for name, (environment, mounted) in given.items()
            if name not in nodes and (environment & secrets or mounted)} == {}


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_dashboards() -> None:
    build = dashboards_build()
    datasources = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/prometheus.yml").read_text())
    [source] = datasources["datasources"]
    assert (source["uid"], source["url"]) == (build.DATASOURCE["uid"], "http://prometheus:9090")
    providers = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/keytrail.yml").read_text())
    path = providers["providers"][0]["options"]["path"]
    assert f"./dashboards:{path}:ro" in compose()["services"]["grafana"]["volumes"]


def test_dashboard_json_is_generated_from_the_panel_list() -> None:
    build = dashboards_build()
    assert (ROOT / "dashboards/keytrail-overview.json").read_text() == build.render(), \
        "run: .venv/bin/python dashboards/build.py"


def test_every_panel_queries_only_listed_metrics_and_every_listed_metric_is_used() -> None:
    build = dashboards_build()
    used: set[str] = set()
    for panel in build.dashboard()["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = build.metric_names(target["expr"])
            assert names and names <= set(build.METRICS), (panel["title"], target["expr"])
            used |= names
    assert used == set(build.METRICS)


# Labels Prometheus adds to every scraped series (the target's), and a histogram bucket's bound.
_TARGET_LABELS = {"job", "instance", "le"}


def _labels_used(expr: str, legend: str) -> set[str]:
    """The label names a panel query groups or joins by, filters on, or shows in its legend."""
    grouped = {name.strip() for names in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)
               for name in names.split(",") if name.strip()}
    selected = {name for selector in re.findall(r"\b(?:keytrail_[a-z0-9_]+|up)\{([^}]*)\}", expr)
                for name in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector)}
    return grouped | selected | set(re.findall(r"\{\{(\w+)\}\}", legend))


def test_labels_used_reads_grouping_selectors_and_legend() -> None:
    expr = 'sum by (instance, code) (rate(keytrail_x_total{job!="a",outcome!="success"}[5m])) unless on() up'
    assert _labels_used(expr, "{{code}} {{principal}}") == {"instance", "code", "job", "outcome", "principal"}


def test_every_panel_reads_only_labels_its_metrics_carry() -> None:
    """A panel grouping by, filtering on or naming a label its metrics lack draws one unlabelled
    line, or none, with no error anywhere: METRICS (whose labels the server's are checked against,
    tests/integration/test_reports_dashboards.py) lists every label each family carries."""
    build = dashboards_build()
    wrong = {}
    for _, _, _, queries, _, _ in build.PANELS:
        for expr, legend in queries:
            carried = set().union(*(build.METRICS[name][1] for name in build.metric_names(expr)))
            if extra := _labels_used(expr, legend) - carried - _TARGET_LABELS:
                wrong[expr] = sorted(extra)
    assert wrong == {}


#: A family of docs/metrics.md's table: keytrail's, and serve's start time (the client libraries' name).
DOCUMENTED_FAMILY = r"keytrail_[a-z0-9_]+|process_start_time_seconds"


def documented_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Metric name → (type, labels) from the table of docs/metrics.md, "Prometheus (`GET /metrics`)"."""
    section = (ROOT / "docs/metrics.md").read_text().split("## Prometheus", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(rf"^\| `({DOCUMENTED_FAMILY})` \| (\w+) \| ([^|]*) \|", section, flags=re.M)
    return {name: (kind, tuple(re.findall(r"\b[a-z]+\b(?![^(]*\))", labels.replace("—", ""))))
            for name, kind, labels in rows}


def test_documented_metrics_table_reads_names_types_and_labels() -> None:
    documented = documented_metrics()
    assert documented["keytrail_kms_requests_total"] == ("counter", ("operation", "outcome"))
    assert documented["keytrail_audit_spool_depth"] == ("gauge", ())
    assert documented["process_start_time_seconds"] == ("gauge", ())


def test_every_metric_the_dashboards_query_is_documented_as_they_read_it() -> None:
    """An operator writing an alert or a panel of their own reads docs/metrics.md: each family
    the dashboards use is there with the type and labels the dashboards assume."""
    documented = documented_metrics()
    assert {name: (kind, labels) for name, (kind, labels, _) in dashboards_build().METRICS.items()
            if documented.get(name) != (kind, labels)} == {}


def test_contracts_page_covers_every_section_of_the_shared_contracts() -> None:
    shared = ROOT.parent / "shared" / "CONTRACTS.md"
    if not shared.is_file():
        pytest.skip(f"the shared contracts page is not beside the repository ({shared})")
    sections = re.findall(r"^## \d+\. (.+)$", shared.read_text(), flags=re.M)
    page = (ROOT / "docs/contracts.md").read_text()
    assert sections and [s for s in sections if f"## {s}" not in page] == []


#: python3 of the Linux releases the getting-started guide names (their release notes).
DISTRIBUTION_PYTHON = {"Debian 12": (3, 11), "Ubuntu 22.04": (3, 10), "Ubuntu 24.04": (3, 12)}


def test_the_guide_installs_a_python_keytrail_accepts_on_each_release_it_names() -> None:
    """Ubuntu 22.04's python3 is 3.10, below requires-python: there the guide's apt-get line
    installed a Python `scripts/install` cannot use, and it must name the one to install."""
    required = tuple(int(part) for part in re.findall(r'requires-python = ">=(\d+)\.(\d+)"',
                                                         (ROOT / "pyproject.toml").read_text())[0])
    guide = (ROOT / "docs/getting-started.md").read_text()
    for release, python in DISTRIBUTION_PYTHON.items():
        if release in guide and python < required:
            wanted = f"python{required[0]}.{required[1]}"
            assert f"apt-get install -y {wanted} {wanted}-venv" in guide and f"PYTHON={wanted} scripts/install" in guide


def documented_commands() -> set[str]:
    """`keytrail <command> [<subcommand>]` as written in the shell blocks of the user guides."""
    found: set[str] = set()
    for page in ("getting-started.md", "operations.md", "reports.md"):
        for block in re.findall(r"```sh\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.S):
            for first, second in re.findall(r"(?:^|\.venv/bin/)keytrail ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", block,
                                            flags=re.M):
                found.add(f"{first} {second}" if first in ("audit",) and second else first)
    return found


def test_user_guides_name_only_real_commands() -> None:
    documented = documented_commands()
    assert {"serve", "report", "audit verify"} <= documented
    assert sorted(documented - cli_commands()) == []


# deploy/alerts.yml: the alerting rules deploy/prometheus.yml loads (docs/operations.md, "Alerts").
ALERTS = ROOT / "deploy/alerts.yml"
OPERATIONS = ROOT / "docs/operations.md"
#: The alert's `severity` label: critical pages, warning makes a ticket.
SEVERITIES = {"critical", "warning"}
#: PromQL's words that are not metric names (functions are known by the "(" after them).
_PROMQL_WORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left",
                 "group_right", "inf", "nan"}
#: Prometheus's own series of each target (job, instance); none of keytrail's.
_PROMETHEUS_SERIES = {"up": ()}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The series a PromQL expression reads: every name left once strings, label matchers, ranges,
    offsets and grouping clauses are taken out, that is not a function (followed by "(") or a word
    of PromQL's. A histogram's _bucket, _sum and _count are named by their family."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\boffset\s+\w+|\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    names = {name for name in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", bare)
             if name.lower() not in _PROMQL_WORDS}
    histograms = {name for name, (kind, _) in documented_metrics().items() if kind == "histogram"}
    return {family if (family := re.sub(r"_(bucket|sum|count)$", "", name)) in histograms else name
            for name in names}


def test_metric_names_reads_series_not_functions_labels_or_durations() -> None:
    expr = ('histogram_quantile(0.99, sum by (job, le) (rate(keytrail_audit_fsync_seconds_bucket{job="a"}[5m])))'
            ' > 0.1 and on(instance) up offset 5m unless keytrail_x_total{outcome=~"b|c"} / 300')
    assert metric_names(expr) == {"keytrail_audit_fsync_seconds", "up", "keytrail_x_total"}


def test_the_rule_file_is_one_group_of_alerts_each_with_for_severity_summary_description_and_runbook() -> None:
    document = yaml.safe_load(ALERTS.read_text())
    assert set(document) == {"groups"} and [group["name"] for group in document["groups"]] == ["keytrail"]
    rules = alert_rules()
    assert len(rules) >= 8
    names = [rule["alert"] for rule in rules]
    assert len(set(names)) == len(names), names
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, rule["alert"]


def test_every_alert_reads_only_metrics_keytrail_serves() -> None:
    """An alert over a family no process serves (a typo, a family renamed) never fires, and nothing
    says so: its expression is empty. docs/metrics.md's table is the list of what `keytrail serve`,
    `consume` and `detect` serve, checked against a real serve's GET /metrics
    (tests/integration/test_reports_dashboards.py, which also scrapes the alerts' families)."""
    served = set(documented_metrics()) | set(_PROMETHEUS_SERIES)
    unknown = {rule["alert"]: sorted(names - served) for rule in alert_rules()
               if (names := metric_names(rule["expr"])) and not names <= served}
    assert unknown == {}
    assert all(metric_names(rule["expr"]) for rule in alert_rules())


def _carried(name: str) -> set[str]:
    labels = dict(_PROMETHEUS_SERIES) | {n: labels for n, (_, labels) in documented_metrics().items()}
    return set(labels[name]) | _TARGET_LABELS


def test_every_label_an_alert_reads_is_one_its_metric_carries() -> None:
    """A matcher on a label its metric lacks (`outcome` on the denials, `code` on the requests)
    matches nothing, or everything for `!=`; a `by (…)` of one gives one unlabelled series."""
    wrong: dict[str, list[str]] = {}
    for rule in alert_rules():
        expr = rule["expr"]
        for name, matchers in re.findall(r"\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}", expr):
            family = next(iter(metric_names(name)))
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            wrong.setdefault(rule["alert"], []).extend(sorted(used - _carried(family)))
        carried = set().union(*(_carried(name) for name in metric_names(expr)))
        wrong.setdefault(rule["alert"], []).extend(sorted(_labels_used(expr, "") - carried))
        templated = set(re.findall(r"\$labels\.(\w+)", yaml.safe_dump(rule["annotations"])))
        wrong[rule["alert"]].extend(sorted(templated - carried))
    assert {alert: labels for alert, labels in wrong.items() if labels} == {}


def test_every_job_an_alert_names_is_a_job_prometheus_scrapes() -> None:
    jobs = set(_scrape_jobs())
    named = {rule["alert"]: {job for value in re.findall(r'\bjob\s*(?:=~|!~|!=|=)\s*"([^"]*)"', rule["expr"])
                             for job in value.split("|")} for rule in alert_rules()}
    assert {alert: sorted(names - jobs) for alert, names in named.items() if names - jobs} == {}


def test_the_alarm_alerts_drop_the_alarms_severity_label_for_their_own() -> None:
    """keytrail_alarms_total has a `severity` label of its own (HIGH, CRITICAL): an alert over it
    that kept it would have it overwritten by the rule's (critical, warning), or, in Alertmanager's
    grouping, two meanings under one name. Those alerts aggregate it away."""
    for rule in alert_rules():
        if "keytrail_alarms_total" in metric_names(rule["expr"]):
            [grouped] = re.findall(r"^sum by \(([^)]*)\)", rule["expr"])
            assert "severity" not in grouped, rule["alert"]


def operations_sections() -> dict[str, str]:
    """docs/operations.md: its GitHub anchor → the section's heading and text, up to the next heading."""
    text = OPERATIONS.read_text()
    parts = re.split(r"^(#{2,3} .+)$", text, flags=re.M)
    return {_anchor(heading): heading.lstrip("# ") + "\n" + body
            for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, blanks as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lstrip("# ").strip().lower()).replace(" ", "-")


def test_anchor_is_github_s() -> None:
    assert _anchor("## Watching it") == "watching-it" and _anchor("## Backup and restore") == "backup-and-restore"


def test_every_alert_names_a_runbook_section_of_the_operations_guide() -> None:
    """The on-call engineer follows the alert to the page: its `runbook` anchor is a heading of
    docs/operations.md, which its description names, and each item it names in brackets is a
    point of that section (a bold lead, or a `literal`)."""
    sections = operations_sections()
    wrong = {}
    for rule in alert_rules():
        description, runbook = rule["annotations"]["description"], rule["annotations"]["runbook"]
        page, _, anchor = runbook.partition("#")
        _, marker, where = description.partition("Runbook: docs/operations.md,")
        named = re.findall(r'"([^"]+)"(?: \(([^)]*)\))?', where) if marker else []
        problems = [f"runbook {runbook}: no such section"] if page != "docs/operations.md" or anchor not in sections \
            else []
        if not named or _anchor(named[0][0]) != anchor:
            problems.append(f"the description does not end naming {runbook}'s section: Runbook: docs/operations.md, …")
        for heading, items in named:
            section = sections.get(_anchor(heading), "")
            if not section:
                problems.append(f'no section "{heading}"')
            for item in filter(None, (item.split(":")[0].strip() for item in items.split(","))):
                if f"**{item}" not in section and f"`{item}`" not in section:
                    problems.append(f'"{heading}" has no point "{item}"')
        if problems:
            wrong[rule["alert"]] = problems
    assert wrong == {}


def alerts_table() -> dict[str, str]:
    """docs/operations.md, "Alerts": alert → severity, from its table."""
    section = operations_sections()["alerts"]
    return dict(re.findall(r"^\| `(\w+)` \| (\w+) \|", section, flags=re.M))


def test_the_operations_guide_lists_every_alert_with_its_severity() -> None:
    assert alerts_table() == {rule["alert"]: rule["labels"]["severity"] for rule in alert_rules()}


def test_prometheus_loads_the_alerts_and_compose_mounts_them_where_it_looks() -> None:
    """rule_files are read relative to the configuration file: compose's Prometheus has it at
    /etc/prometheus/prometheus.yml, so the rules must be mounted beside it, as they are beside it here."""
    config = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    assert config["rule_files"] == [ALERTS.name] and (ROOT / "deploy" / config["rule_files"][0]).is_file()
    prometheus = compose()["services"]["prometheus"]
    mounts = {volume.split(":")[0]: volume.split(":")[1] for volume in prometheus["volumes"]}
    config = Path(mounts["./deploy/prometheus.yml"])
    assert f"--config.file={config}" in prometheus["command"]
    assert mounts.get("./deploy/alerts.yml") == str(config.parent / ALERTS.name)


_PROMTOOL = pytest.mark.skipif(shutil.which("promtool") is None,
                               reason="promtool (Debian package prometheus) is not installed")


@_PROMTOOL
def test_promtool_accepts_the_configuration_and_its_rules() -> None:
    result = subprocess.run(["promtool", "check", "config", "deploy/prometheus.yml"], cwd=ROOT, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and "SUCCESS: 1 rule files found" in result.stdout, result.stdout + result.stderr


def _series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f'{name}{{job="keytrail",instance="node-1:4599"{labels}}}', "values": values}


def _fires(alert: str, at: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A promtool alert_rule_test: `alert` fires at `at` with the node's labels (and `labels`)."""
    severity = next(rule["labels"]["severity"] for rule in alert_rules() if rule["alert"] == alert)
    fired = {"job": "keytrail", "instance": "node-1:4599", "severity": severity, **(labels or {})}
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": fired}]}


def _silent(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


_BAD_SIGNATURE = ',code="InvalidSignatureException"'
_KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
_OTHER_KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/0987dcba-09ab-87cd-65ef-0987654321ba"
_EXPIRATION = "keytrail_kms_key_material_expiration_timestamp_seconds"


#: (what it shows, input series, the alerts expected to fire or stay silent): one minute a sample.
ALERT_CASES: list[tuple[str, list[dict[str, str]], list[dict[str, Any]]]] = [
    ("a node down for 2 minutes pages", [_series("up", "", "1 1 0 0 0 0")],
     [_silent("KeytrailNodeDown", "3m"), _fires("KeytrailNodeDown", "4m")]),
    ("a node whose audit spool fails every call pages, naming the part",
     [_series("keytrail_healthy", ',part="audit"', "1 1 0 0 0 0"),
      _series("keytrail_healthy", ',part="keyStore"', "1x5")],
     [_silent("KeytrailUnhealthy", "2m"), _fires("KeytrailUnhealthy", "3m", {"part": "audit"})]),
    # A full disk on a quiet node, a call every 13 s: the audit part shows 0 only for the 10 s after
    # each refused call, so the scrapes mostly see 1 and KeytrailUnhealthy never stays pending a minute.
    ("a quiet node on a full disk refusing a call every 13 s pages, though its health keeps coming back",
     [_series("keytrail_healthy", ',part="audit"', "1 1 0 1 1 0 1 1 0 1 1 0 1")]
     + [_series("keytrail_audit_refused_calls_total", f',reason="{reason}"', values)
        for reason, values in (("cannot_write", "0 0 5 9 14 18 23 28 32 37 42 46 51"), ("spool_failed", "0x12"))],
     [_silent("KeytrailUnhealthy", "12m"), _silent("KeytrailAuditRefusedCalls", "2m"),
      _fires("KeytrailAuditRefusedCalls", "3m", {"reason": "cannot_write"})]),
    ("one call refused for want of its record pages; none refused, or a restart's reset to 0, stays silent",
     [_series("keytrail_audit_refused_calls_total", ',reason="cannot_write"', "0x5 1x10"),
      _series("keytrail_audit_refused_calls_total", ',reason="kafka_cap"', "0x15"),
      _series("keytrail_audit_refused_calls_total", ',reason="spool_failed"', "3x7 0x8")],
     [_silent("KeytrailAuditRefusedCalls", "6m"), _fires("KeytrailAuditRefusedCalls", "7m", {"reason": "cannot_write"}),
      _silent("KeytrailAuditRefusedCalls", "15m")]),
    ("the unshipped audit log past 70 % of the node's own cap (10 MiB; from 8m) for 5 minutes",
     [_series("keytrail_audit_unshipped_bytes", "", "0+1000000x20"),
      _series("keytrail_audit_unshipped_bytes_limit", "", "10485760x20")],
     [_silent("KeytrailAuditSpoolNearCap", "12m"), _fires("KeytrailAuditSpoolNearCap", "14m")]),
    ("a broker that lost acknowledged audit records pages at once, for 15 minutes; a restart's reset does not",
     [_series("keytrail_audit_kafka_losses_total", "", "0x5 1x30 0x5")],
     [_silent("KeytrailAuditKafkaLostRecords", "5m"), _fires("KeytrailAuditKafkaLostRecords", "6m"),
      _silent("KeytrailAuditKafkaLostRecords", "22m"), _silent("KeytrailAuditKafkaLostRecords", "40m")]),
    ("shipping paused on a node that records nothing: 5 records wait for good",
     [_series("keytrail_audit_spool_depth", "", "5x20"), _series("keytrail_audit_committed_records_total", "", "9x20")],
     [_silent("KeytrailAuditShippingStalled", "9m"), _fires("KeytrailAuditShippingStalled", "16m")]),
    ("shipping keeping up with 100 records a second: a few hundred in flight at each scrape",
     [_series("keytrail_audit_spool_depth", "", "250 30 400 0 120 310 90 20 400 10 250 30 400 0 120 310 90 20 400 10"),
      _series("keytrail_audit_committed_records_total", "", "0+6000x20")],
     [_silent("KeytrailAuditShippingStalled", "19m")]),
    ("shipping paused under load: the spool grows by the node's calls",
     [_series("keytrail_audit_spool_depth", "", "0 0 0 0 0 0+6000x15"),
      _series("keytrail_audit_committed_records_total", "", "0+6000x20")],
     [_fires("KeytrailAuditShippingStalled", "19m")]),
    ("21 denials of an operation at once, in a series born with them, make a spike",
     [_series("keytrail_kms_denied_requests_total", ',operation="Decrypt"', "_x10 21x10"), _series("up", "", "1x20")],
     [_fires("KeytrailDeniedCallsSpike", "17m")]),
    # The request and denial counters are the consumer's, kept across restarts: after a gap in the
    # scrapes they came back at their lifetime totals, which the alerts took whole as new.
    ("a node with 500 denials in its life, down 6 minutes and back with none new, makes no spike",
     [_series("keytrail_kms_denied_requests_total", ',operation="Decrypt"', "500x20 stale _x5 500x30"),
      _series("up", "", "1x20 0x6 1x30")],
     [_silent("KeytrailDeniedCallsSpike", "36m"), _silent("KeytrailDeniedCallsSpike", "50m")]),
    ("a node whose calls all succeed, down 6 minutes and back, shows no key store errors",
     [_series("keytrail_kms_requests_total", f',operation="Decrypt",outcome="{outcome}"', values)
      for outcome, values in (("success", "0+100x20 stale _x5 2000+100x30"),
                              ("KMSInternalException", "300x20 stale _x5 300x30"))]
     + [_series("up", "", "1x20 0x6 1x30")],
     [_silent("KeytrailKeyStoreErrors", "31m"), _silent("KeytrailKeyStoreErrors", "36m")]),
    # keytrail_kms_unauthenticated_total counts from zero at each start of serve: a node that kept running
    # through a gap in the scrapes comes back at its since-start total, which the alert took whole as new.
    ("120 refusals in a node's first 10 minutes, none after: Prometheus down from 60m to 80m pages no one",
     [_series("keytrail_kms_unauthenticated_total", _BAD_SIGNATURE, "0+12x10 120x49 _x20 120x30"),
      _series("up", "", "1x59 _x20 1x30"), _series("process_start_time_seconds", "", "0x59 _x20 0x30")],
     [_silent("KeytrailUnauthenticatedRequests", "58m"), _silent("KeytrailUnauthenticatedRequests", "88m")]),
    ("the same node out of Prometheus's reach from 60m to 80m (a network partition) pages no one",
     [_series("keytrail_kms_unauthenticated_total", _BAD_SIGNATURE, "0+12x10 120x48 stale _x19 120x30"),
      _series("up", "", "1x59 0x20 1x30"), _series("process_start_time_seconds", "", "0x59 _x20 0x30")],
     [_silent("KeytrailUnauthenticatedRequests", "88m")]),
    ("a node refusing 12 requests a minute from 5m, its series born with the first, pages",
     [_series("keytrail_kms_unauthenticated_total", _BAD_SIGNATURE, "_x5 12+12x30"), _series("up", "", "1x36"),
      _series("process_start_time_seconds", "", "0x36")],
     [_silent("KeytrailUnauthenticatedRequests", "9m"), _fires("KeytrailUnauthenticatedRequests", "14m")]),
    ("a node restarted at 60m (one scrape missed) refusing 12 requests a minute after its start pages",
     [_series("keytrail_kms_unauthenticated_total", _BAD_SIGNATURE, "_x60 12+12x30"),
      _series("up", "", "1x59 0 1x30"), _series("process_start_time_seconds", "", "0x59 _ 3605x30")],
     [_silent("KeytrailUnauthenticatedRequests", "59m"), _fires("KeytrailUnauthenticatedRequests", "70m")]),
    # Down for longer than the window, the node answered no scrape a window ago: its start tells the series is new.
    ("60 requests refused at once right after a restart that followed 20 minutes down pages",
     [_series("keytrail_kms_unauthenticated_total", _BAD_SIGNATURE, "_x61 60x30"),
      _series("up", "", "1x39 0x21 1x30"), _series("process_start_time_seconds", "", "0x39 _x21 3605x30")],
     [_fires("KeytrailUnauthenticatedRequests", "66m"), _silent("KeytrailUnauthenticatedRequests", "72m")]),
    ("the first CRITICAL alarm pages, under the alert's severity, not the alarm's",
     [_series("keytrail_alarms_total", f',rule="key-deletion-in-use",severity="{severity}"', values)
      for severity, values in (("CRITICAL", "0 0 0 1 1 1"), ("HIGH", "0x5"))],
     [_fires("KeytrailCriticalAlarm", "4m", {"rule": "key-deletion-in-use"}), _silent("KeytrailHighAlarm", "4m")]),
    ("a child restarting every 2 minutes",
     [_series("keytrail_child_restarts_total", ',child="consumer"', "0 0 1 1 2 2 3 3 4 4 5 5 6 6 7 7 8 8 9 9 10")],
     [_fires("KeytrailChildRestarting", "16m", {"child": "consumer"})]),
    ("a consumer 50,000 records behind and falling further",
     [_series("keytrail_pipeline_consumer_lag", ',partition="segment-log"', "50000+1000x30")],
     [_fires("KeytrailConsumerLagging", "30m", {"partition": "segment-log"})]),
    ("a consumer 50,000 records behind and catching up",
     [_series("keytrail_pipeline_consumer_lag", ',partition="segment-log"', "80000-2000x30")],
     [_silent("KeytrailConsumerLagging", "30m")]),
    ("a detector 50,000 events behind and falling further",
     [_series("keytrail_detector_lag", ',partition="keytrail.audit.v1-0"', "50000+1000x30")],
     [_fires("KeytrailDetectorLagging", "30m", {"partition": "keytrail.audit.v1-0"})]),
    ("a detector 50,000 events behind and catching up (a restart replays the log)",
     [_series("keytrail_detector_lag", ',partition="segment-log"', "80000-2000x30")],
     [_silent("KeytrailDetectorLagging", "30m")]),
    ("the consumer held at a damaged record of the event log on a quiet node, its lag far under 10,000",
     [_series("keytrail_event_log_reader_held", f',reader="{reader}"', values)
      for reader, values in (("consumer", "0 0 1x10"), ("detector", "0x12"))],
     [_silent("KeytrailEventLogReaderHeld", "6m"), _fires("KeytrailEventLogReaderHeld", "8m", {"reader": "consumer"})]),
    ("a reader held for a few minutes, until the segment is restored, is no alert",
     [_series("keytrail_event_log_reader_held", ',reader="audit shipper"', "0 1 1 1 0x8")],
     [_silent("KeytrailEventLogReaderHeld", "4m"), _silent("KeytrailEventLogReaderHeld", "10m")]),
    ("events dated after now counted for 10 minutes: a node's clock ahead, or a record imported from the future",
     [_series("keytrail_pipeline_events_after_now", "", "0 0 3x20")],
     [_silent("KeytrailEventsDatedAfterNow", "11m"), _fires("KeytrailEventsDatedAfterNow", "13m")]),
    ("events ahead for a few minutes (a node's clock a little ahead, set right) and none before any is counted",
     [_series("keytrail_pipeline_events_after_now", "", "_x3 0 0 2 2 1 0x15")],
     [_silent("KeytrailEventsDatedAfterNow", "2m"), _silent("KeytrailEventsDatedAfterNow", "16m")]),
    ("a tenth of the calls fail on the key store, their series born at the first failure",
     [_series("keytrail_kms_requests_total", ',operation="Decrypt",outcome="success"', "0+540x20"),
      _series("keytrail_kms_requests_total", ',operation="Decrypt",outcome="KMSInternalException"', "_x4 1+60x15"),
      _series("up", "", "1x20")],
     [_silent("KeytrailKeyStoreErrors", "4m"), _fires("KeytrailKeyStoreErrors", "12m")]),
    ("a node at its connection limit closing new connections minute after minute",
     [_series("keytrail_http_refused_connections_total", f',reason="{reason}"', values)
      for reason, values in (("connection_limit", "0x5 0+3x10"), ("tls_handshake_failed", "0x15"))],
     [_silent("KeytrailConnectionLimit", "9m"), _fires("KeytrailConnectionLimit", "13m"),
      _silent("KeytrailTlsHandshakesFailing", "15m")]),
    ("one connection closed at the limit, once, is no alert",
     [_series("keytrail_http_refused_connections_total", ',reason="connection_limit"', "0x5 1x15")],
     [_silent("KeytrailConnectionLimit", "8m"), _silent("KeytrailConnectionLimit", "12m")]),
    ("an expired certificate: every client's handshake fails, 10 a minute",
     [_series("keytrail_http_refused_connections_total", f',reason="{reason}"', values)
      for reason, values in (("tls_handshake_failed", "0x5 0+10x25"), ("connection_limit", "0x30"))],
     [_silent("KeytrailTlsHandshakesFailing", "12m"), _fires("KeytrailTlsHandshakesFailing", "25m"),
      _silent("KeytrailConnectionLimit", "25m")]),
    ("a scanner's few handshakes an hour",
     [_series("keytrail_http_refused_connections_total", ',reason="tls_handshake_failed"', "0+0.2x30")],
     [_silent("KeytrailTlsHandshakesFailing", "30m")]),
    ("a CONNECTED store's token removed at 5m: its calls fail from then on, the series born with the first",
     [_series("keytrail_custom_key_store_failed_calls_total", ',store="cks-1234567890abcdef0"', "_x5 1+4x20"),
      _series("up", "", "1x25"), _series("process_start_time_seconds", "", "0x25")],
     [_silent("KeytrailCustomKeyStoreFailing", "4m"),
      _fires("KeytrailCustomKeyStoreFailing", "5m", {"store": "cks-1234567890abcdef0"}),
      _fires("KeytrailCustomKeyStoreFailing", "20m", {"store": "cks-1234567890abcdef0"})]),
    ("one failure after an HSM restart, then none: fires for 10 minutes; a Prometheus gap after is no new failure",
     [_series("keytrail_custom_key_store_failed_calls_total", ',store="cks-1234567890abcdef0"', "_x5 1x25 _x20 1x20"),
      _series("up", "", "1x30 _x20 1x20"), _series("process_start_time_seconds", "", "0x30 _x20 0x20")],
     [_fires("KeytrailCustomKeyStoreFailing", "10m", {"store": "cks-1234567890abcdef0"}),
      _silent("KeytrailCustomKeyStoreFailing", "20m"), _silent("KeytrailCustomKeyStoreFailing", "55m")]),
    ("a grant found tampered at 5m pages at once, naming its table, until the node restarts (at 15m)",
     [_series("keytrail_key_store_tampered_rows_total", f',table="{table}"', values)
      for table, values in (("grants", "0x4 1x9 0x5"), ("keys", "0x19"))],
     [_silent("KeytrailKeyStoreTampered", "4m"), _fires("KeytrailKeyStoreTampered", "5m", {"table": "grants"}),
      _fires("KeytrailKeyStoreTampered", "14m", {"table": "grants"}), _silent("KeytrailKeyStoreTampered", "15m")]),
    ("a store found not to match its ledger at 3m pages at once",
     [_series("keytrail_key_store_ledger_mismatch", "", "0x2 1x5")],
     [_silent("KeytrailKeyStoreLedgerMismatch", "2m"), _fires("KeytrailKeyStoreLedgerMismatch", "3m")]),
    # promtool's time() starts at 0: a ValidTo of 3 days is 259200, of 30 days 2592000.
    ("imported material expiring in 3 days warns once, whichever nodes tell it; material of 30 days does not",
     [{"series": f'{_EXPIRATION}{{job="keytrail",instance="{node}",key="{key}"}}', "values": f"{valid_to}x20"}
      for node in ("node-1:4599", "node-2:4599") for key, valid_to in ((_KEY_ARN, 259200), (_OTHER_KEY_ARN, 2592000))],
     [_silent("KeytrailKeyMaterialExpiring", "9m"),
      {"eval_time": "11m", "alertname": "KeytrailKeyMaterialExpiring",
       "exp_alerts": [{"exp_labels": {"key": _KEY_ARN, "severity": "warning"}}]}]),
    ("fsyncs of 0.5 s: every audited call waits for them",
     [_series("keytrail_audit_fsync_seconds_bucket", f',le="{le}"', "0+100x20" if le in ("1", "+Inf") else "0x20")
      for le in ("0.001", "0.1", "0.25", "1", "+Inf")],
     [_fires("KeytrailAuditFsyncSlow", "16m")]),
]


@_PROMTOOL
@pytest.mark.parametrize("case", [case[0] for case in ALERT_CASES])
def test_the_alerts_fire_as_prometheus_evaluates_them(case: str, tmp_path: Path) -> None:
    """Each alert evaluated by Prometheus's own rule engine (`promtool test rules`) over the series
    a node would serve. Their annotations are left out: promtool compares them whole, text and all
    (`promtool check config` above checks their templates)."""
    [(_, series, expected)] = [c for c in ALERT_CASES if c[0] == case]
    rules = [{key: value for key, value in rule.items() if key != "annotations"} for rule in alert_rules()]
    (tmp_path / ALERTS.name).write_text(yaml.safe_dump({"groups": [{"name": "keytrail", "rules": rules}]}))
    test = {"rule_files": [ALERTS.name], "evaluation_interval": "1m",
            "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": expected}]}
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    result = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
