#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A short run of fuzz-qmp (the libFuzzer target for the control
# socket's command layer) from the seeds fuzz-qmp-seeds.sh writes, with
# its dictionary: any crash, leak, timeout, sanitizer report or broken
# invariant fails the test.  "make fuzz" runs the same fuzzer for
# longer.
#
# Without clang and libFuzzer the test is skipped, or fails in CI
# (CI=true), where they must be installed.
set -euo pipefail

: "${srcdir:=$(dirname "$0")}"
seconds="${FUZZ_SMOKE_SECONDS:-20}"
max_len="${FUZZ_MAX_LEN:-4096}"
rss_limit="${FUZZ_RSS_LIMIT_MB:-1024}"

missing ()
{
  if [ "${CI:-}" = "true" ]; then
    echo "$0: FAIL: $1 (CI must install it)" >&2
    exit 1
  fi
  echo "$0: SKIP: $1" >&2
  exit 77
}

if [ ! -x ./fuzz-qmp ]; then
  if [ -z "${CLANG:-}" ]; then
    command -v clang >/dev/null 2>&1 &&
      echo "$0: clang is installed now: re-run configure" >&2
    missing "clang was not found by configure (Debian: clang)"
  fi
  probe="$(mktemp "${TMPDIR:-/tmp}/fuzz-probe.XXXXXX")"
  if ! echo 'int LLVMFuzzerTestOneInput (const char *d, unsigned long n)
             { return 0; }' |
       "$CLANG" -fsanitize=fuzzer,address,undefined -x c - -o "$probe" \
         >/dev/null 2>&1; then
    rm -f "$probe"
    missing "$CLANG cannot link with libFuzzer (Debian: libclang-rt-dev)"
  fi
  rm -f "$probe"
  echo "$0: FAIL: ./fuzz-qmp is not built, though $CLANG works" >&2
  exit 1
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fuzz-qmp-smoke.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/seeds" "$tmp/corpus" "$tmp/artifacts"
"${BASH:-bash}" "$srcdir/fuzz-qmp-seeds.sh" "$tmp/seeds"

status=0
./fuzz-qmp -max_total_time="$seconds" -max_len="$max_len" \
  -rss_limit_mb="$rss_limit" -timeout=30 -print_final_stats=1 \
  -dict="$srcdir/fuzz-qmp.dict" -artifact_prefix="$tmp/artifacts/" \
  "$tmp/corpus" "$tmp/seeds" > "$tmp/log" 2>&1 || status=$?

# libFuzzer's own lines (INITED, pulse, DONE, stats) and any report.
grep -a -E '^(#[0-9]+|INFO:|==[0-9]+==|SUMMARY|stat::|fuzz-qmp:|.*runtime error)' \
  "$tmp/log" | grep -v -E '^#[0-9]+.*(NEW|REDUCE)' | tail -n 40 || :
executions=$(awk '/^stat::number_of_executed_units:/ { print $2 }' "$tmp/log")
echo "$0: ${executions:-?} executions in $seconds s"
if [ "$status" -ne 0 ]; then
  echo "$0: FAIL: fuzz-qmp exited with status $status; full log:" >&2
  tail -n 100 "$tmp/log" >&2
  # Keep what it found in fuzz-artifacts/ (see "make fuzz"), and show
  # it in the log too, for a CI run whose tree is gone.
  mkdir -p fuzz-artifacts
  for f in "$tmp"/artifacts/*; do
    [ -e "$f" ] || continue
    cp "$f" fuzz-artifacts/
    echo "$0: reproducer kept as $PWD/fuzz-artifacts/$(basename "$f");" \
         "replay it with FUZZ_QMP_VERBOSE=1 ./fuzz-qmp FILE; gzip | base64:" >&2
    gzip -9c "$f" | base64 >&2
  done
  exit 1
fi
