"""The deploy files pass Prometheus's own checks, and the alert rules' unit tests cover every alert."""

import re
import subprocess

from metrics_stack import PROM_DIR, tool


def promtool(*args):
    result = subprocess.run([tool("promtool"), *args], capture_output=True, text=True, timeout=120,
                            cwd=PROM_DIR)
    return result.returncode, result.stdout + result.stderr


def alert_names(text, key):
    return set(re.findall(rf"(?m)^\s*-?\s*{key}:\s*(\w+)\s*$", text))


def test_scrape_config_is_valid():
    code, out = promtool("check", "config", "prometheus.yml")
    assert code == 0, out
    assert "1 rule files found" in out, out  # the alert rules are loaded with the config


def test_alert_rules_are_valid():
    rules = (PROM_DIR / "alerts.yml").read_text()
    code, out = promtool("check", "rules", "alerts.yml")
    assert code == 0, out
    assert f"SUCCESS: {len(alert_names(rules, 'alert'))} rules found" in out, out


def test_alert_rule_unit_tests_pass_and_cover_every_alert():
    rules = alert_names((PROM_DIR / "alerts.yml").read_text(), "alert")
    tested = alert_names((PROM_DIR / "alerts_test.yml").read_text(), "alertname")
    assert rules and tested == rules, (rules, tested)
    code, out = promtool("test", "rules", "alerts_test.yml")
    assert code == 0, out
