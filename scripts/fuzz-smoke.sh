#!/usr/bin/env bash
# Runs each fuzz target of crates/smtp-core/fuzz for a few seconds (cargo-fuzz on the
# nightly toolchain). Longer runs: `cargo +nightly fuzz run TARGET` in crates/smtp-core.
set -euo pipefail
cd "$(dirname "$0")/../crates/smtp-core"
seconds="${FUZZ_SECONDS:-10}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
for target in line command reply reframer session originate; do
  echo "fuzz $target for ${seconds}s"
  dict=""
  [ -f "fuzz/$target.dict" ] && dict="-dict=fuzz/$target.dict"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 $dict 2>&1 | tail -n 3
done
