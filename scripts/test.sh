#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit and integration tests
# (real nodes on 127.0.0.1, real FUSE mounts), then the outside filesystem suites
# (pjdfstest, fsx) against a mounted ring. Installs what it needs (cargo install).
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    fmt, clippy and cargo test only
set -euo pipefail
cd "$(dirname "$0")/.."

quick=no
[ "${1:-}" = --quick ] && quick=yes

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (all targets, warnings denied)"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --no-fail-fast -- --test-threads=2

if [ $quick = yes ]; then
  exit 0
fi
# The outside suites, from crates.io (installed once; ~75 s and ~85 s to build).
export PATH="$HOME/.cargo/bin:$PATH"
command -v pjdfstest >/dev/null || cargo install --locked --quiet pjdfstest
command -v fsx >/dev/null || cargo install --locked --quiet fsx
# pjdfstest switches to these users; Debian has them, a slim image may not.
getent group nogroup >/dev/null || groupadd -r nogroup 2>/dev/null || true
getent passwd nobody >/dev/null || useradd -r -g nogroup nobody 2>/dev/null || true
getent passwd daemon >/dev/null || useradd -r daemon 2>/dev/null || true
cargo build --quiet --bin chordfs
for suite in scripts/pjdfstest.sh scripts/fsx.sh; do
  if [ -x "$suite" ]; then
    echo "== $suite"
    "$suite"
  fi
done
