#!/usr/bin/env bash
# mypy --strict over the whole package as it is installed: the layer folders (schemas/,
# producers/, ...) import as steplog.<layer>, a mapping mypy cannot read from pyproject.toml,
# so it checks a tree of links laid out like the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=.cache/typecheck
rm -rf "$tree" && mkdir -p "$tree/steplog"
for entry in steplog/*; do ln -s "$PWD/$entry" "$tree/steplog/"; done
for layer in schemas producers processors projections; do ln -s "$PWD/$layer" "$tree/steplog/$layer"; done
ln -s "$PWD/tests" "$tree/tests"
ln -s "$PWD/benchmarks" "$tree/benchmarks"
cd "$tree" && exec "$OLDPWD/.venv/bin/mypy" --config-file "$OLDPWD/pyproject.toml" steplog tests benchmarks "$@"
