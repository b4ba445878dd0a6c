#!/usr/bin/env bash
# Set up accelmon on a fresh Debian/Ubuntu machine: system packages (Go + govmomi for the
# vCenter simulator, Prometheus and Alertmanager, Chromium for the report test) and a virtualenv in .venv
# with accelmon installed editable plus its dev tools. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# --spark: also the optional Spark extra (pyspark) and Java 17 (docs/spark.md)
SPARK=0
for a in "$@"; do
  case "$a" in
    --spark) SPARK=1 ;;
    *) echo "setup: unknown option $a (known: --spark)" >&2; exit 2 ;;
  esac
done

APT_PKGS=(golang-go golang-github-vmware-govmomi-dev prometheus prometheus-alertmanager chromium python3-venv ca-certificates openssl systemd)
[ "$SPARK" -eq 1 ] && APT_PKGS+=(openjdk-17-jre-headless)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "$SPARK" -eq 1 ]; then
  # pip's cache keeps the built pyspark wheel (~450 MB download once per machine)
  .venv/bin/python -m pip install -q -e '.[dev,spark]'
  java -version >/dev/null 2>&1 || echo "setup: Java 17 missing: apt-get install openjdk-17-jre-headless" >&2
else
  .venv/bin/python -m pip install -q -e '.[dev]'
fi
echo "setup: ok ($(.venv/bin/accelmon --version))" >&2
