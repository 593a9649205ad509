#!/usr/bin/env bash
# Installs Prometheus and promtool, pinned, into .tools/prometheus (project-local, reused while
# the pin is unchanged): Debian's package, downloaded with `apt-get download` and unpacked with
# `dpkg-deb -x` (no root, nothing installed system-wide). Used by the rule tests and the live
# monitoring check (deploy/monitoring/, it/monitoring.rs). Prints the bin folder.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.42.0+ds-5+deb12u1
dest=.tools/prometheus
if [[ "$(cat "$dest/version" 2>/dev/null)" != "$version" ]]; then
  echo "installing prometheus $version into $dest" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  if ! (cd "$work" && apt-get download -q "prometheus=$version" >/dev/null 2>&1); then
    echo "cannot download Debian's prometheus $version (apt-get download; as root, apt-get update first)" >&2
    exit 1
  fi
  rm -rf "$dest"
  mkdir -p "$dest"
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  mkdir -p "$dest/bin"
  mv "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$dest/bin/"
  echo "$version" >"$dest/version"
fi
echo "$(pwd)/$dest/bin"
