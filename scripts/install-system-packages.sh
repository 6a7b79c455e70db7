#!/usr/bin/env bash
# Installs the Debian packages Steplog's local stack needs (Java for the Kafka broker, Maven to
# fetch its jars) and its tests need (Chromium, which the browser tests drive through
# Playwright: Debian's build, never a browser Playwright downloads; a JDK for the JDBC
# compatibility check), only when they are missing: idempotent and quick on a ready machine.
# Node.js and Go are checked, not installed (Debian's are too old).
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
# tests/compat/java (clickhouse-jdbc's compatibility check) is compiled: the JDK, not only the JRE.
command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
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
# tests/compat/go (clickhouse-go's compatibility check) needs Go 1.21+ (which fetches the
# toolchain its go.mod names through the module proxy); Debian 12's golang-go is 1.19.
go_bin=$(command -v go || echo /usr/local/go/bin/go)
if ! "$go_bin" version 2>/dev/null | grep -Eq 'go1\.(2[1-9]|[3-9][0-9])'; then
  echo "Go 1.21 or newer is needed to build tests/compat/go (found:" \
       "$("$go_bin" version 2>/dev/null || echo none)); install it from go.dev/dl" >&2
  exit 1
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${missing[*]}" >&2
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
