"""Checks of deploy/monitoring/ that need no running service (the live check is it/monitoring.rs).

Needs `promtool` on PATH (scripts/install-prometheus.sh puts Debian's into .tools/prometheus/bin;
scripts/deploy-check.sh finds it there) and PyYAML.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent.parent
MONITORING = DEPLOY / "monitoring"
RULES = MONITORING / "rules.yml"
TESTS = MONITORING / "rules.test.yml"
RUNBOOK = MONITORING / "RUNBOOK.md"
PROMETHEUS_RULE = DEPLOY / "k8s" / "prometheusrule.yaml"


def promtool(*args, cwd=None):
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=cwd)


def render(out, **env):
    subprocess.run(
        [sys.executable, str(MONITORING / "render.py"), "--out", str(out)],
        check=True, env={**os.environ, **env},
    )


def alert_names():
    return [rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def metric_names(text):
    return set(re.findall(r"(?<![A-Za-z0-9_:])(md5_[a-z0-9_]*[a-z0-9])", text))


class Rules(unittest.TestCase):
    def test_the_committed_files_are_what_render_writes(self):
        run = subprocess.run([sys.executable, str(MONITORING / "render.py"), "--check"], capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)

    def test_promtool_accepts_the_rules_and_the_example_configuration(self):
        for args in (["check", "rules", str(RULES)], ["check", "config", str(MONITORING / "prometheus.example.yml")]):
            run = promtool(*args)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)

    def test_the_rule_unit_tests_pass(self):
        run = promtool("test", "rules", str(TESTS))
        self.assertEqual(run.returncode, 0, run.stdout + run.stderr)

    def test_every_alert_has_a_firing_case_a_quiet_case_and_a_runbook_section(self):
        tests = yaml.safe_load(TESTS.read_text())["tests"]
        cases = [case for test in tests for case in test.get("alert_rule_test", [])]
        headings = set(re.findall(r"^### (\S+)$", RUNBOOK.read_text(), re.M))
        for alert in alert_names():
            with self.subTest(alert=alert):
                mine = [case for case in cases if case["alertname"] == alert]
                self.assertTrue(any(case["exp_alerts"] for case in mine), "no case fires it")
                self.assertTrue(any(not case["exp_alerts"] for case in mine), "no case where it must not fire")
                self.assertIn(alert, headings)
        self.assertEqual(headings, set(alert_names()), "runbook sections without an alert")

    def test_the_rule_tests_catch_a_changed_threshold_and_a_renamed_metric(self):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = pathlib.Path(tmp)
            shutil.copy(TESTS, tmp / "rules.test.yml")
            render(tmp, MD5_ALERT_BACKLOG_TASKS="5000")
            run = promtool("test", "rules", "rules.test.yml", cwd=tmp)
            self.assertNotEqual(run.returncode, 0)
            self.assertIn("MD5BacklogHigh", run.stdout + run.stderr)
            render(tmp)
            rules = (tmp / "rules.yml").read_text()
            (tmp / "rules.yml").write_text(rules.replace("md5_ready{", "md5_readiness{"))
            run = promtool("test", "rules", "rules.test.yml", cwd=tmp)
            self.assertNotEqual(run.returncode, 0)
            self.assertIn("MD5NotReady", run.stdout + run.stderr)

    def test_settings_reach_the_rules(self):
        with tempfile.TemporaryDirectory() as tmp:
            render(tmp, MD5_ALERT_FOR="7s", MD5_WORKER_SELECTOR='job="w",env="prod"')
            rules = yaml.safe_load((pathlib.Path(tmp) / "rules.yml").read_text())
            alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
            self.assertEqual({rule["for"] for rule in alerts}, {"7s"})
            down = next(rule for rule in alerts if rule["alert"] == "MD5WorkerDown")
            self.assertEqual(down["expr"].strip(), 'up{job="w",env="prod"} == 0')

    def test_every_metric_the_rules_and_the_dashboard_use_is_documented(self):
        documented = metric_names(RUNBOOK.read_text().split("## Metrics", 1)[1].split("## Alerts", 1)[0])
        used = metric_names(RULES.read_text()) | metric_names((MONITORING / "dashboard.json").read_text())
        used = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
        self.assertEqual(used - documented, set())


class PrometheusRule(unittest.TestCase):
    def test_holds_the_same_groups_as_rules_yml(self):
        rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
        self.assertEqual(rule["apiVersion"], "monitoring.coreos.com/v1")
        self.assertEqual(rule["kind"], "PrometheusRule")
        self.assertEqual(rule["metadata"]["namespace"], "md5")
        self.assertEqual(rule["spec"]["groups"], yaml.safe_load(RULES.read_text())["groups"])

    def test_its_spec_is_a_valid_rule_file(self):
        spec = yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]
        with tempfile.NamedTemporaryFile("w", suffix=".yml") as file:
            yaml.safe_dump(spec, file)
            file.flush()
            run = promtool("check", "rules", file.name)
            self.assertEqual(run.returncode, 0, run.stdout + run.stderr)


class PodMonitors(unittest.TestCase):
    def test_scrape_each_deployments_pods_on_a_named_port_under_the_rules_job_names(self):
        monitors = {doc["metadata"]["name"]: doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / "podmonitors.yaml").read_text())}
        for job, manifest in (("md5-api", "api.yaml"), ("md5-worker", "worker.yaml")):
            with self.subTest(job=job):
                deployment = next(doc for doc in yaml.safe_load_all((DEPLOY / "k8s" / manifest).read_text())
                                  if doc and doc["kind"] == "Deployment")
                pod = deployment["spec"]["template"]
                monitor = monitors[job]["spec"]
                labels = pod["metadata"]["labels"]
                self.assertEqual(labels[monitor["jobLabel"]], job, "the job label the rules select by default")
                for key, value in monitor["selector"]["matchLabels"].items():
                    self.assertEqual(labels[key], value)
                ports = {port["name"] for container in pod["spec"]["containers"] for port in container.get("ports", [])}
                for endpoint in monitor["podMetricsEndpoints"]:
                    self.assertIn(endpoint["port"], ports)
                    self.assertEqual(endpoint["path"], "/metrics")


class Dashboard(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dashboard = json.loads((MONITORING / "dashboard.json").read_text())
        cls.panels = [panel for panel in cls.dashboard["panels"] if panel["type"] != "row"]

    def test_has_a_datasource_variable_that_every_panel_and_query_uses(self):
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
        self.assertEqual(variables["datasource"]["query"], "prometheus")
        for panel in self.panels:
            with self.subTest(panel=panel["title"]):
                self.assertEqual(panel["datasource"]["uid"], "${datasource}")
                self.assertTrue(panel["targets"])
                for target in panel["targets"]:
                    self.assertEqual(target["datasource"]["uid"], "${datasource}")
                    self.assertTrue(target["expr"])

    def test_ids_are_unique_and_panels_do_not_overlap(self):
        ids = [panel["id"] for panel in self.dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        cells = set()
        for panel in self.dashboard["panels"]:
            g = panel["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, panel["title"])
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            self.assertFalse(cells & mine, f"{panel['title']} overlaps another panel")
            cells |= mine

    def test_covers_what_an_operator_watches(self):
        titles = " ".join(panel["title"] for panel in self.panels).lower()
        for topic in ("tasks finished", "upload → done", "hash", "queued", "oldest", "workers up", "lane",
                      "uploads in flight", "connections", "volume", "refusals", "webhook", "readiness"):
            self.assertIn(topic, titles)


if __name__ == "__main__":
    unittest.main()
