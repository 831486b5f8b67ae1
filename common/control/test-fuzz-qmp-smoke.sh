#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# A short run of fuzz-qmp (the libFuzzer target for the control
# socket's command layer) from the seeds fuzz-qmp-seeds.sh writes, with
# its dictionary (see common/utils/fuzz-smoke.sh).  Replay a failure
# with FUZZ_QMP_VERBOSE=1 ./fuzz-qmp FILE, which prints every request
# and reply.
set -euo pipefail

: "${srcdir:=$(dirname "$0")}"
source "$srcdir/../utils/fuzz-smoke.sh"

fuzz_require_built ./fuzz-qmp
fuzz_smoke ./fuzz-qmp "$srcdir/fuzz-qmp-seeds.sh" 4096 \
  -dict="$srcdir/fuzz-qmp.dict"
