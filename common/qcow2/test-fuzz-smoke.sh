#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A short run of fuzz-sidecar (the libFuzzer target for the sidecar
# loader and writer) from the seeds fuzz-seeds.sh makes (see
# common/utils/fuzz-smoke.sh).  Without QEMU's tools, which make the
# seeds, the test is skipped, or fails in CI (CI=true).
set -euo pipefail

: "${srcdir:=$(dirname "$0")}"
source "$srcdir/../utils/fuzz-smoke.sh"

fuzz_require_built ./fuzz-sidecar
for cmd in qemu-img qemu-io; do
  command -v "$cmd" >/dev/null 2>&1 ||
    fuzz_missing "$cmd is not installed (Debian: qemu-utils)"
done
fuzz_smoke ./fuzz-sidecar "$srcdir/fuzz-seeds.sh" 262144
