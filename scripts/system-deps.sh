#!/usr/bin/env bash
# Debian packages the test suite needs, installed only when missing (make test runs this first):
#   dataset-fashion-mnist  real data: /usr/share/datasets/fashion-mnist (IDX files, 70,000 images)
#   chromium, chromium-driver  the headless browser that tests/test_e2e_ui.py drives
#   postgresql             the server tests/test_postgres_lineage.py starts in a temporary folder (initdb, postgres)
set -euo pipefail
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
echo "Installing Debian packages the tests need: ${need[*]}"
# the package lists of a fresh machine may be empty or stale: update once when the first try fails
($sudo apt-get install -y -q "${need[@]}" || ($sudo apt-get update -q && $sudo apt-get install -y -q "${need[@]}")) >/dev/null
