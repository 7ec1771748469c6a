#!/usr/bin/env bash
# One command for every test on a fresh Debian machine with Rust: installs what the tests
# need when missing (cmake and protoc for the build, pebble for the ACME tests and its
# pebble-challtestsrv as the DNS server of the backend-name tests, etcd for the
# fleet tests, which start their own members on free loopback ports: an etcd service the
# package may start on 2379 is neither used nor in the way; haproxy for the PROXY protocol
# tests), checks formatting and clippy, then runs the unit and integration tests with
# cargo-nextest (cargo test if absent), and validates the deploy artifacts
# (scripts/check-deploy.sh, which installs its own tools).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh cmake=cmake protoc=protobuf-compiler etcd=etcd-server pebble=pebble pebble-challtestsrv=pebble curl=curl haproxy=haproxy

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --no-fail-fast --status-level fail --final-status-level slow
else
  cargo test --no-fail-fast
fi
echo "== deploy artifacts"
scripts/check-deploy.sh
