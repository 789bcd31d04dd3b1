"""Static checks of the Grafana provisioning: the dashboard parses, uses the provisioned
datasource, has the panels the service promises, and only names documented metrics.
(Its expressions run against a real Prometheus in test_prometheus_integration.py.)"""

import json
import re

from metrics_stack import DASHBOARD, DEPLOY, PROM_DIR, REPO

PROVISIONING = DEPLOY / "grafana" / "provisioning"


def load():
    return json.loads(DASHBOARD.read_text())


def exprs(dash):
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_dashboard_uses_the_provisioned_datasource():
    ds = (PROVISIONING / "datasources" / "prometheus.yml").read_text()
    uids = re.findall(r"(?m)^\s*uid:\s*(\S+)\s*$", ds)
    assert len(uids) == 1
    dash = load()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": uids[0]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uids[0], panel["title"]
    for var in dash["templating"]["list"]:
        assert var["datasource"]["uid"] == uids[0]


def test_dashboard_provider_loads_the_dashboards_folder():
    provider = (PROVISIONING / "dashboards" / "tensorprep.yml").read_text()
    assert re.search(r"(?m)^\s*type:\s*file\s*$", provider)
    assert re.search(r"(?m)^\s*path:\s*/\S+\s*$", provider)


def test_dashboard_has_the_promised_panels():
    dash = load()
    by_title = {p["title"]: [t["expr"] for t in p["targets"]] for p in dash["panels"]}

    def panel_with(*needles):
        return [t for t, es in by_title.items() if all(any(n in e for e in es) for n in needles)]

    assert panel_with("tensorprep_samples_total")  # throughput
    assert panel_with('code!="OK"', "tensorprep_requests_total")  # error ratio
    assert panel_with("tensorprep_requests_in_flight")  # in flight
    # p50 / p95 / p99 per stage and device.
    stage = panel_with("tensorprep_stage_duration_seconds_bucket")
    assert len(stage) == 1
    joined = " ".join(by_title[stage[0]])
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}," in joined
    assert all("stage, device" in e for e in by_title[stage[0]])
    # The remote call beside the in-process Python callback, from the client family.
    assert panel_with("tensorprep_client_call_duration_seconds_bucket", "path, workload")


def test_every_metric_used_is_documented():
    docs = (REPO / "docs" / "metrics.md").read_text()
    used = set()
    for expr in exprs(load()) + [(PROM_DIR / "alerts.yml").read_text()]:
        used |= set(re.findall(r"\btensorprep_[a-z_]+", expr))
    assert used
    for name in sorted(used):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f"`{base}`" in docs, f"{base} is used by the dashboard or alerts but not in docs"
