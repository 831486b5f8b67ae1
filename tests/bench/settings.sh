# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Part of the benchmark, sourced by tests/bench/run.sh: the settings
# (the BENCH_* variables described there, their defaults and checks,
# and the constants of every phase), the tools found (python3, libnbd's
# Python module, qemu-nbd and nbdinfo) and the CPU pinning.  Dies on a
# setting that makes no sense or a missing tool, before anything starts.

BENCH_PHASES="${BENCH_PHASES:-filter steady fresh bitmaps views}"
BENCH_SECONDS="${BENCH_SECONDS:-10}"
BENCH_PAIRS="${BENCH_PAIRS:-5}"
BENCH_IODEPTH="${BENCH_IODEPTH:-16}"
BENCH_NUMJOBS="${BENCH_NUMJOBS:-2}"
BENCH_RAMP="${BENCH_RAMP:-1}"
BENCH_PREFILL="${BENCH_PREFILL:-1}"
BENCH_PIN="${BENCH_PIN:-1}"
BENCH_WARMUP="${BENCH_WARMUP:-1}"
BENCH_NULL="${BENCH_NULL:-0}"
BENCH_STEADY_SECONDS="${BENCH_STEADY_SECONDS:-5}"
BENCH_STEADY_PAIRS="${BENCH_STEADY_PAIRS:-3}"
BENCH_STEADY_GRANS="${BENCH_STEADY_GRANS:-1M}"
BENCH_FRESH_SECONDS="${BENCH_FRESH_SECONDS:-4}"
BENCH_FRESH_ROUNDS="${BENCH_FRESH_ROUNDS:-3}"
BENCH_FRESH_GRANS="${BENCH_FRESH_GRANS:-1M 64K}"
BENCH_BITMAPS_SECONDS="${BENCH_BITMAPS_SECONDS:-5}"
BENCH_BITMAPS_ROUNDS="${BENCH_BITMAPS_ROUNDS:-3}"
BENCH_BITMAPS_COUNT="${BENCH_BITMAPS_COUNT:-64}"
BENCH_BITMAPS_SAFE="${BENCH_BITMAPS_SAFE:-safe unsafe}"
BENCH_BITMAPS_ADD="${BENCH_BITMAPS_ADD:-params}"
BENCH_VIEWS_SECONDS="${BENCH_VIEWS_SECONDS:-5}"
BENCH_VIEWS_ROUNDS="${BENCH_VIEWS_ROUNDS:-3}"
BENCH_SIDECAR_DIR="${BENCH_SIDECAR_DIR:-}"
BENCH_STEADY_DISK="${BENCH_STEADY_DISK:-1G}"
DISK_SIZE=1G                    # the disk of the filter and fresh phases
DISK_BYTES=$((1024 * 1024 * 1024))
REGION=1G                       # where fio writes, from offset 0
disk_size="$DISK_SIZE"          # the disk of the phase being run
BLOCK_SIZE=4k
TARGET=0.97
STEADY_TARGET=0.95
BITMAPS_TARGET=0.97
VIEWS_TARGET=0.95

for v in BENCH_SECONDS BENCH_PAIRS BENCH_IODEPTH BENCH_NUMJOBS \
         BENCH_STEADY_SECONDS BENCH_STEADY_PAIRS \
         BENCH_FRESH_SECONDS BENCH_FRESH_ROUNDS \
         BENCH_BITMAPS_SECONDS BENCH_BITMAPS_ROUNDS BENCH_BITMAPS_COUNT \
         BENCH_VIEWS_SECONDS BENCH_VIEWS_ROUNDS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v='${!v}' is not a positive integer"
done
[ "$BENCH_VIEWS_SECONDS" -ge 2 ] ||
  die "BENCH_VIEWS_SECONDS=$BENCH_VIEWS_SECONDS: at least 2 (the first second is reported apart)"
[[ "$BENCH_RAMP" =~ ^[0-9]+$ ]] || die "BENCH_RAMP='$BENCH_RAMP' is not an integer"
[[ "$BENCH_PREFILL" =~ ^[01]$ ]] || die "BENCH_PREFILL='$BENCH_PREFILL' must be 0 or 1"
[[ "$BENCH_PIN" =~ ^[01]$ ]] || die "BENCH_PIN='$BENCH_PIN' must be 0 or 1"
[[ "$BENCH_WARMUP" =~ ^[01]$ ]] || die "BENCH_WARMUP='$BENCH_WARMUP' must be 0 or 1"
[[ "$BENCH_NULL" =~ ^[01]$ ]] || die "BENCH_NULL='$BENCH_NULL' must be 0 or 1"
for p in $BENCH_PHASES; do
  case "$p" in
    filter|steady|fresh|bitmaps|views) ;;
    *) die "BENCH_PHASES: unknown phase '$p' (filter, steady, fresh, bitmaps, views)" ;;
  esac
done
[ -n "${BENCH_PHASES// /}" ] || die "BENCH_PHASES is empty"
[ "$BENCH_BITMAPS_COUNT" -ge 2 ] && [ "$BENCH_BITMAPS_COUNT" -le 1000 ] ||
  die "BENCH_BITMAPS_COUNT='$BENCH_BITMAPS_COUNT' must be from 2 to 1000"
[ -n "${BENCH_BITMAPS_SAFE// /}" ] || die "BENCH_BITMAPS_SAFE is empty"
for s in $BENCH_BITMAPS_SAFE; do
  case "$s" in
    safe|unsafe) ;;
    *) die "BENCH_BITMAPS_SAFE: '$s' is neither safe nor unsafe" ;;
  esac
done
case "$BENCH_BITMAPS_ADD" in
  params|qmp) ;;
  *) die "BENCH_BITMAPS_ADD='$BENCH_BITMAPS_ADD' must be params or qmp" ;;
esac

[[ "$BENCH_STEADY_DISK" =~ ^[1-9][0-9]*[KMGT]?$ ]] ||
  die "BENCH_STEADY_DISK='$BENCH_STEADY_DISK' is not a size such as 1G or 1T"
for v in BENCH_STEADY_GRANS BENCH_FRESH_GRANS; do
  [ -n "${!v// /}" ] || die "$v is empty"
  for g in ${!v}; do
    [[ "$g" =~ ^[1-9][0-9]*[KMG]?$ ]] ||
      die "$v: '$g' is not a size such as 64K or 1M"
  done
done

for cmd in nbdkit fio; do
  command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is not installed"
done
[ -f "$FILTER" ] || die "$FILTER is not built (run make first)"
fio --enghelp=nbd >/dev/null 2>&1 || die "this fio has no nbd engine"
[ "$(size_bytes "$BENCH_STEADY_DISK")" -ge "$DISK_BYTES" ] ||
  die "BENCH_STEADY_DISK=$BENCH_STEADY_DISK is smaller than the 1G written"

# Any python3 will do: only the json and statistics modules are used.
if [ -x /usr/bin/python3 ]; then
  PYTHON=/usr/bin/python3
elif command -v python3 >/dev/null 2>&1; then
  PYTHON=python3
else
  die "python3 is needed to parse fio's JSON output"
fi

# The steady phase on a disk over 1G zeroes it with libnbd's Python
# module (Debian installs it for /usr/bin/python3).
NBD_PYTHON=
if [ "$(size_bytes "$BENCH_STEADY_DISK")" -gt "$DISK_BYTES" ] &&
   [[ " $BENCH_PHASES " == *" steady "* ]]; then
  for py in /usr/bin/python3 "$PYTHON"; do
    if "$py" -c 'import nbd' 2>/dev/null; then
      NBD_PYTHON="$py"
      break
    fi
  done
  [ -n "$NBD_PYTHON" ] ||
    die "BENCH_STEADY_DISK=$BENCH_STEADY_DISK needs libnbd's Python module (python3-libnbd)"
fi

# The fresh phase counts the regions first written from bitmap b0 in
# the sidecar, as QEMU serves it.
have_map=0
if command -v qemu-nbd >/dev/null 2>&1 && command -v nbdinfo >/dev/null 2>&1; then
  have_map=1
fi

# CPU pinning: nbdkit on the first half of the CPUs we may use, fio on
# the rest.  Skipped with fewer than 2 CPUs or without taskset.
nbdkit_pin=()
fio_pin=()
pin_note="off"
if [ "$BENCH_PIN" = 1 ]; then
  if ! command -v taskset >/dev/null 2>&1; then
    pin_note="off (taskset is not installed)"
  else
    cpus="$("$PYTHON" "$bench_dir/cpu-halves.py")" ||
      die "could not read the CPU affinity"
    if [ -z "$cpus" ]; then
      pin_note="off (fewer than 2 CPUs)"
    else
      read -r nbdkit_cpus fio_cpus <<<"$cpus"
      nbdkit_pin=(taskset -c "$nbdkit_cpus")
      fio_pin=(taskset -c "$fio_cpus")
      pin_note="nbdkit on CPU $nbdkit_cpus, fio on CPU $fio_cpus"
    fi
  fi
fi
