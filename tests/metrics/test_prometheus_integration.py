"""The metrics, the dashboard and the alert rules against a real Prometheus server.

A tensorprep server and a client process (tests/metrics/client_load.py) are scraped by Prometheus
started with the repository's scrape config and alert rules (see conftest.py). The client's
summary of what it sent is the reference for exact counts; every PromQL expression of the Grafana
dashboard and of the alert rules is then run through Prometheus's HTTP API.
"""

import json
import math
import operator
import re
import subprocess
import time

import pytest

from metrics_stack import DASHBOARD, http_get, poll

GRPC_CODES = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
    "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}
# The closed label names of the server's families (docs/metrics.md); `le` is the bucket bound.
SERVER_LABELS = {"rpc", "code", "stage", "device", "op", "version", "le", "transport",
                 "direction", "protocol", "model"}
TRANSPORTS = {"inline", "shm", "mixed"}
STAGES = ("decode", "queue", "kernel", "encode", "image_decode")

# Grafana's $__rate_interval, replaced for the test: longer than the whole test, so every window
# starts at the first scrape (all series at zero) and no observation falls out of it.
RATE_INTERVAL = "5m"


def labels_of(sample):
    return {k: v for k, v in sample["metric"].items() if k != "__name__"}


def value_of(sample):
    return float(sample["value"][1])


def series_lines(text):
    """The sample lines of an exposition: {"name{labels}"}; comments and values dropped."""
    out = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            out.add(line.rsplit(" ", 1)[0])
    return out


def parse_labels(series):
    body = series[series.index("{") + 1:-1] if "{" in series else ""
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', body))


# --- the server's own exposition ---------------------------------------------------------------

def test_exposition_passes_promtool_lint(stack, traffic):
    text = http_get(stack["metrics_url"])
    lint = subprocess.run([stack["promtool"], "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr


def test_series_are_created_up_front_and_never_carry_request_data(stack, traffic):
    before = series_lines(stack["metrics_before"])
    after_text = http_get(stack["metrics_url"])
    after = series_lines(after_text)
    # Traffic only moved values: the closed label sets existed before the first request.
    assert after == before, (sorted(after - before)[:10], sorted(before - after)[:10])
    marker = traffic["marker"]
    assert marker not in after_text
    ours = [series for series in after if series.startswith("tensorprep_")]
    assert len(ours) > 1000  # 3 RPCs x 17 codes x 22 histogram lines alone
    for series in ours:
        labels = parse_labels(series)
        assert set(labels) <= SERVER_LABELS, series
        if "code" in labels:
            assert labels["code"] in GRPC_CODES, series
        if "transport" in labels:
            assert labels["transport"] in TRANSPORTS, series
        if "direction" in labels:
            assert labels["direction"] in ("in", "out"), series
        if "protocol" in labels:
            assert labels["protocol"] == "kserve_v2", series
        if "model" in labels:
            # Pipelines of the server's pipeline file (none here) and the built-in model only.
            assert labels["model"] == "tensorprep", series
        for value in labels.values():
            assert "127.0.0.1" not in value and "[" not in value, series


# --- exact counts against what the client sent -------------------------------------------------

def test_requests_are_counted_by_rpc_and_code(stack, traffic):
    api = stack["api"]
    sent = traffic["requests"]
    assert sent.get("Process INVALID_ARGUMENT", 0) > 0 and sent.get("ProcessStream "
                                                                    "INVALID_ARGUMENT", 0) > 0
    for key, count in sent.items():
        rpc, code = key.split()
        sel = f'job="tensorprep",rpc="{rpc}",code="{code}"'
        assert api.value(f"tensorprep_requests_total{{{sel}}}") == count, key
        # Failed requests land in the duration histogram with their code, like the others.
        assert api.value(f"tensorprep_request_duration_seconds_count{{{sel}}}") == count, key
        assert api.value(
            f'tensorprep_request_duration_seconds_bucket{{{sel},le="+Inf"}}') == count, key
    # Nothing counted under a code or RPC the client did not see.
    totals = {}
    for key, count in sent.items():
        totals[key.split()[0]] = totals.get(key.split()[0], 0) + count
    for rpc in ("Process", "ProcessStream", "ListOps"):
        assert api.value(f'sum(tensorprep_requests_total{{rpc="{rpc}"}})') == totals.get(rpc, 0)


def test_samples_bytes_and_gauges_match_the_traffic(stack, traffic):
    api = stack["api"]
    assert traffic["devices"] == {"cpu": traffic["timings_count"]}
    assert api.value('tensorprep_samples_total{device="cpu"}') == traffic["samples_ok"]
    assert api.value('tensorprep_samples_total{device="cuda"}') == 0
    assert api.value("tensorprep_sent_bytes_total") == traffic["bytes_out"]
    received = api.value("tensorprep_received_bytes_total")
    # Whether a rejected request's payload counts depends on where it was rejected.
    assert traffic["bytes_in_ok"] <= received <= traffic["bytes_in_ok"] + traffic["bytes_in_failed"]
    # Everything finished: nothing in flight, queued or open.
    for rpc in ("Process", "ProcessStream", "ListOps"):
        assert api.value(f'tensorprep_requests_in_flight{{rpc="{rpc}"}}') == 0, rpc
    assert api.value("tensorprep_queued_requests") == 0
    assert api.value("tensorprep_streams_open") == 0
    assert api.value('tensorprep_device_usable{device="cpu"}') == 1
    build = api.query("tensorprep_build_info")
    assert len(build) == 1 and value_of(build[0]) == 1 and build[0]["metric"]["version"]


def test_stage_histograms_hold_the_timings_the_responses_carry(stack, traffic):
    """Each response reports the same per-stage times that the histograms observe."""
    api = stack["api"]
    n_ok = traffic["timings_count"]
    # Only successful requests run kernels: the kernel stage matches the responses one to one.
    assert api.value('tensorprep_stage_duration_seconds_count{stage="kernel",device="cpu"}') == n_ok
    kernel = api.value('tensorprep_stage_duration_seconds_sum{stage="kernel",device="cpu"}')
    assert kernel == pytest.approx(traffic["timings"]["kernel"], abs=1e-6 * n_ok)
    assert kernel > 0
    # Failed requests may spend time in the other stages too, never less than the responses say.
    for stage in ("decode", "queue", "encode"):
        count = api.value(f'tensorprep_stage_duration_seconds_count{{stage="{stage}",device="cpu"}}')
        total = api.value(f'tensorprep_stage_duration_seconds_sum{{stage="{stage}",device="cpu"}}')
        assert count >= n_ok, stage
        assert total >= traffic["timings"][stage] - 1e-6 * n_ok, stage
    # A response's total covers its stages.
    stages = sum(traffic["timings"][s] for s in STAGES)
    assert traffic["timings"]["total"] >= stages - 1e-6 * n_ok


def test_client_family_counts_every_call_and_callback(stack, traffic):
    api = stack["api"]
    calls = traffic["client_calls"]
    assert {k.split()[0] for k in calls} == {"remote_unary", "remote_stream", "python_callback"}
    for key, count in calls.items():
        path, workload = key.split()
        got = api.value('tensorprep_client_call_duration_seconds_count{'
                        f'job="tensorprep-client",path="{path}",workload="{workload}"}}')
        assert got == count, key
    # The client's round trip encloses the server's time: network time is never negative.
    client = api.value('sum(tensorprep_client_call_duration_seconds_sum{path="remote_unary"})')
    server = api.value('tensorprep_request_duration_seconds_sum{rpc="Process",code="OK"}')
    assert client > server > 0


# --- the dashboard -----------------------------------------------------------------------------

def dashboard_targets():
    dash = json.loads(DASHBOARD.read_text())
    variables = {}
    for var in dash["templating"]["list"]:
        # "All" is what a fresh dashboard shows; Grafana sends the variable's allValue for it.
        variables[var["name"]] = var["allValue"]
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for name, value in variables.items():
                expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
            assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
            out.append((panel["title"], target["refId"], expr))
    return out


def finite(samples):
    return [s for s in samples if math.isfinite(value_of(s))]


def pick(samples, **labels):
    return [s for s in samples if all(s["metric"].get(k) == v for k, v in labels.items())]


def check_panel(title, ref, result, traffic):
    """Expected shape of each panel's series after the test's traffic. Returns the label keys."""
    keys = {frozenset(labels_of(s)) for s in result}
    assert len(keys) == 1, f"{title} {ref}: mixed label sets {keys}"
    keys = set(next(iter(keys)))
    requests = traffic["requests"]
    if title.startswith("Throughput"):
        assert keys == {"device"}
        assert value_of(pick(result, device="cpu")[0]) > 0
    elif title.startswith("Requests/s"):
        assert keys == {"rpc", "code"}
        for key in requests:
            rpc, code = key.split()
            assert value_of(pick(result, rpc=rpc, code=code)[0]) > 0, key
    elif title.startswith("Error ratio"):
        assert keys == {"rpc"}
        process = {k.split()[1]: v for k, v in requests.items() if k.startswith("Process ")}
        want = 1 - process["OK"] / sum(process.values())
        # Every series started at zero inside the window, so the extrapolation of rate() scales
        # numerator and denominator alike and the ratio is exact.
        assert value_of(pick(result, rpc="Process")[0]) == pytest.approx(want, rel=1e-6)
        assert value_of(pick(result, rpc="ListOps")[0]) == 0
    elif title.startswith("Request latency"):
        assert keys == {"rpc"}
        for rpc in ("Process", "ProcessStream", "ListOps"):
            v = value_of(pick(result, rpc=rpc)[0])
            assert 0 < v <= 30, (rpc, v)
    elif title.startswith("Stage latency"):
        assert keys == {"stage", "device"}
        for stage in STAGES:
            v = value_of(pick(result, stage=stage, device="cpu")[0])
            assert 0 <= v <= 30, (stage, v)
    elif title.startswith("Kernel latency"):
        assert keys == {"op", "device"}
        cpu = finite(pick(result, device="cpu"))
        assert cpu and all(0 < value_of(s) <= 30 for s in cpu), result
    elif title.startswith("In flight"):
        assert keys == ({"rpc"} if ref == "A" else set())
        assert all(value_of(s) == 0 for s in result)
    elif title.startswith("Tensor bytes"):
        assert keys == set() and value_of(result[0]) > 0
    elif title.startswith("Remote call vs"):
        if ref in ("A", "B"):
            assert keys == {"path", "workload"}
            for key in traffic["client_calls"]:
                path, workload = key.split()
                v = value_of(pick(result, path=path, workload=workload)[0])
                assert 0 < v <= 30, (key, v)
        else:
            assert keys == {"rpc"}
            assert {s["metric"]["rpc"] for s in finite(result)} == {"Process", "ProcessStream"}
    elif title == "Devices usable":
        assert keys == {"device"}
        assert value_of(pick(result, device="cpu")[0]) == 1
    elif title == "Build":
        assert keys == {"version"} and len(result) == 1 and value_of(result[0]) == 1
    else:
        pytest.fail(f"panel {title!r} has no expected shape in this test; add one")
    return keys


def test_every_dashboard_expression_returns_the_expected_series(stack, traffic):
    api = stack["api"]
    targets = dashboard_targets()
    assert len(targets) >= 15
    for title, ref, expr in targets:
        result = api.query(expr)
        assert result, f"{title} {ref}: no data for {expr}"
        check_panel(title, ref, result, traffic)


# --- the alert rules ---------------------------------------------------------------------------

COMPARISON = re.compile(r"^(?P<lhs>.*\S)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<thr>-?[0-9.]+)\s*$", re.S)
OPS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le,
       "==": operator.eq, "!=": operator.ne}
# Alert -> the labels of its quantity. Adding an alert without adding it here fails the test.
ALERT_LABELS = {
    "TensorprepServerErrorRatioHigh": {"job", "instance", "rpc"},
    "TensorprepErrorRatioHigh": {"job", "instance", "rpc"},
    "TensorprepStageLatencyP99High": {"job", "instance", "stage", "device"},
    "TensorprepNoUsableDevice": {"job", "instance"},
    "TensorprepDown": {"job", "instance"},
}


def loaded_rules(api):
    rules = []
    for group in api.api("rules")["groups"]:
        rules += [r for r in group["rules"] if r["type"] == "alerting"]
    return rules


def test_alert_rules_are_loaded_and_evaluate_cleanly(stack, traffic):
    rules = loaded_rules(stack["api"])
    assert {r["name"] for r in rules} == set(ALERT_LABELS)
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def test_alert_quantities_have_data_and_thresholds_select_the_right_series(stack, traffic):
    api = stack["api"]
    requests = traffic["requests"]
    for rule in loaded_rules(api):
        m = COMPARISON.match(rule["query"])
        assert m, f"{rule['name']}: expression is not '<quantity> <op> <number>': {rule['query']}"
        at = time.time()
        quantity = api.query(m["lhs"], at=at)
        assert quantity, f"{rule['name']}: no data for {m['lhs']}"
        for sample in quantity:
            assert set(labels_of(sample)) == ALERT_LABELS[rule["name"]], (rule["name"], sample)
        # The full expression keeps exactly the series whose quantity passes the threshold.
        compare, threshold = OPS[m["op"]], float(m["thr"])
        want = sorted(json.dumps(labels_of(s), sort_keys=True) for s in quantity
                      if compare(value_of(s), threshold))
        got = sorted(json.dumps(labels_of(s), sort_keys=True)
                     for s in api.query(rule["query"], at=at))
        assert got == want, rule["name"]

        by_rpc = {s["metric"].get("rpc"): value_of(s) for s in quantity}
        if rule["name"] == "TensorprepErrorRatioHigh":
            for rpc in ("Process", "ProcessStream"):
                codes = {k.split()[1]: v for k, v in requests.items() if k.split()[0] == rpc}
                want_ratio = 1 - codes["OK"] / sum(codes.values())
                assert by_rpc[rpc] == pytest.approx(want_ratio, rel=1e-6), rpc
                assert want_ratio > threshold  # the test's traffic is meant to trip it
        elif rule["name"] == "TensorprepServerErrorRatioHigh":
            assert by_rpc["Process"] == 0 and by_rpc["ListOps"] == 0
        elif rule["name"] == "TensorprepStageLatencyP99High":
            cpu = {s["metric"]["stage"]: value_of(s) for s in quantity
                   if s["metric"]["device"] == "cpu"}
            assert set(cpu) == set(STAGES) and all(0 <= v < 30 for v in cpu.values()), cpu
        elif rule["name"] in ("TensorprepNoUsableDevice", "TensorprepDown"):
            assert [value_of(s) for s in quantity] == [1.0]


def test_error_ratio_alert_goes_pending_in_prometheus(stack, traffic):
    api = stack["api"]
    pending = poll("TensorprepErrorRatioHigh to go pending", lambda: api.query(
        'ALERTS{alertname="TensorprepErrorRatioHigh",alertstate="pending",rpc="Process"}'))
    assert pending[0]["metric"]["severity"] == "warning"
    assert not api.query('ALERTS{alertname=~"TensorprepNoUsableDevice|TensorprepDown|'
                         'TensorprepServerErrorRatioHigh"}')
