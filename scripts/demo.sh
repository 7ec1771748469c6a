#!/usr/bin/env bash
# One command for the demo on a fresh Debian machine with Rust: installs cmake (pingora builds
# zlib-ng with it) and protoc (the etcd client's build needs it) when missing, builds both
# binaries (so the `releasectl` commands the demo prints work at once), then runs
# `switchyard demo` through cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh cmake=cmake protoc=protobuf-compiler
cargo build --release --bin switchyard --bin releasectl
exec cargo run --release --bin switchyard -- demo "$@"
