#!/usr/bin/env bash
# Installs the Debian packages Steplog's local stack needs (Java for the Kafka broker, Maven to
# fetch its jars) and its tests need (Chromium, which the browser tests drive through
# Playwright: Debian's build, never a browser Playwright downloads), only when they are
# missing: idempotent and quick on a ready machine.
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
# tests/browser/ drives exactly this path (Playwright's executable_path).
[ -x /usr/bin/chromium ] || missing+=(chromium)
# The dashboard's build (Vite 7) needs Node.js 20.19+ and npm; Debian 12's own nodejs (18) is
# too old to install in its place, so a missing or old one is named, not installed.
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
              process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null \
   || ! command -v npm >/dev/null 2>&1; then
  echo "Node.js 20.19 or newer with npm is needed to build the dashboard (found:" \
       "$(node --version 2>/dev/null || echo none)); install it from nodejs.org or NodeSource" >&2
  exit 1
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${missing[*]}" >&2
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
