# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# The smoke runs of the libFuzzer targets in common/ (sourced by each
# test-fuzz-*smoke.sh): a short run from the seeds its script writes,
# in which any crash, leak, timeout, sanitizer report or broken
# invariant fails the test.  "make fuzz" runs the same fuzzer for
# longer.  A missing tool skips the test, or fails it in CI (CI=true),
# where it must be installed.

# fuzz_missing WHY: skip, or fail in CI.
fuzz_missing ()
{
  if [ "${CI:-}" = "true" ]; then
    echo "$0: FAIL: $1 (CI must install it)" >&2
    exit 1
  fi
  echo "$0: SKIP: $1" >&2
  exit 77
}

# fuzz_require_built FUZZER: the Makefile builds it only when $CLANG
# can link with libFuzzer; say which is missing, or fail when it works
# and the fuzzer is not built all the same.
fuzz_require_built ()
{
  local probe

  [ -x "$1" ] && return 0
  if [ -z "${CLANG:-}" ]; then
    command -v clang >/dev/null 2>&1 &&
      echo "$0: clang is installed now: re-run configure" >&2
    fuzz_missing "clang was not found by configure (Debian: clang)"
  fi
  probe="$(mktemp "${TMPDIR:-/tmp}/fuzz-probe.XXXXXX")"
  if ! echo 'int LLVMFuzzerTestOneInput (const char *d, unsigned long n)
             { return 0; }' |
       "$CLANG" -fsanitize=fuzzer,address,undefined -x c - -o "$probe" \
         >/dev/null 2>&1; then
    rm -f "$probe"
    fuzz_missing "$CLANG cannot link with libFuzzer (Debian: libclang-rt-dev)"
  fi
  rm -f "$probe"
  echo "$0: FAIL: $1 is not built, though $CLANG works" >&2
  exit 1
}

# fuzz_smoke FUZZER SEEDER MAX_LEN [OPTION...]: run FUZZER for
# FUZZ_SMOKE_SECONDS (20) from the seeds "SEEDER DIR MAX_LEN" writes,
# with libFuzzer's OPTIONs; FUZZ_MAX_LEN and FUZZ_RSS_LIMIT_MB (from
# the Makefile) override MAX_LEN and 1024.  On failure the reproducer
# is kept in fuzz-artifacts/ and shown in the log.
fuzz_smoke ()
{
  local fuzzer="$1" seeder="$2" max_len="${FUZZ_MAX_LEN:-$3}"
  local seconds="${FUZZ_SMOKE_SECONDS:-20}" rss="${FUZZ_RSS_LIMIT_MB:-1024}"
  local name status=0 executions f
  # (tmp stays global: the EXIT trap removes it when the test ends.)

  shift 3
  name="$(basename "$fuzzer")"
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/$name-smoke.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  mkdir "$tmp/seeds" "$tmp/corpus" "$tmp/artifacts"
  "${BASH:-bash}" "$seeder" "$tmp/seeds" "$max_len"

  "$fuzzer" -max_total_time="$seconds" -max_len="$max_len" \
    -rss_limit_mb="$rss" -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$tmp/artifacts/" "$@" \
    "$tmp/corpus" "$tmp/seeds" > "$tmp/log" 2>&1 || status=$?

  # libFuzzer's own lines (INITED, pulse, DONE, stats) and any report.
  grep -a -E "^(#[0-9]+|INFO:|==[0-9]+==|SUMMARY|stat::|$name:|.*runtime error)" \
    "$tmp/log" | grep -v -E '^#[0-9]+.*(NEW|REDUCE)' | tail -n 40 || :
  executions=$(awk '/^stat::number_of_executed_units:/ { print $2 }' \
                 "$tmp/log")
  echo "$0: ${executions:-?} executions in $seconds s"
  [ "$status" -eq 0 ] && return 0
  echo "$0: FAIL: $name exited with status $status; full log:" >&2
  tail -n 100 "$tmp/log" >&2
  # Keep what it found in fuzz-artifacts/ (see "make fuzz"), and show
  # it in the log too, for a CI run whose tree is gone.
  mkdir -p fuzz-artifacts
  for f in "$tmp"/artifacts/*; do
    [ -e "$f" ] || continue
    cp "$f" fuzz-artifacts/
    echo "$0: reproducer kept as $PWD/fuzz-artifacts/$(basename "$f");" \
         "replay it with $fuzzer FILE; gzip | base64:" >&2
    gzip -9c "$f" | base64 >&2
  done
  exit 1
}
