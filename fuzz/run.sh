#!/usr/bin/env bash
# Bounded fuzz run over the checked-in seed corpus: SECONDS per target
# (default 20). Long runs: `SECONDS_PER_TARGET=3600 fuzz/run.sh`, or
# `cargo fuzz run -s none decode_message` from fuzz/'s parent directory.
# New interesting inputs go to a scratch copy, so the checked-in corpus
# only changes when someone copies finds back on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_TARGET:-20}
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi
for target in decode_message load_config_and_keys authorize_and_subscribe; do
    scratch=$(mktemp -d)
    cp -r "fuzz/corpus/$target/." "$scratch/"
    echo "fuzzing $target for ${seconds}s"
    log=$(mktemp)
    set +e
    cargo fuzz run -s none -O "$target" "$scratch" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    grep -E "^(stat::number_of_executed_units|stat::new_units_added|==|SUMMARY|Done)" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
    fi
    rm -f "$log"
    rm -rf "$scratch"
    if [ "$status" -ne 0 ]; then
        echo "fuzz target $target failed (artifacts in fuzz/artifacts/$target)" >&2
        exit "$status"
    fi
done
