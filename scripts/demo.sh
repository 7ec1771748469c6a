#!/usr/bin/env bash
# One command for the demo on a fresh Debian machine with Rust: installs cmake (pingora
# builds zlib-ng with it) when missing, then runs `switchyard demo` through cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh cmake=cmake
exec cargo run --release --bin switchyard -- demo "$@"
