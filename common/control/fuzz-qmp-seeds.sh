#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# Copyright (C) 2026 The nbdkit-dirtybitmap authors

# Write the seed corpus of fuzz-qmp in DIR: one file per scenario, each
# the text a client sends after the greeting, one request per line.
# They are the requests and the errors of tests/test-qmp-*.sh and
# common/control/test-qmp-server.c, written out by hand: the tests
# build their requests in Python at run time, so there is nothing to
# extract mechanically, and a seed that is plain text here is easy to
# read, change and replay (./fuzz-qmp FILE).  Written at run time, as
# fuzz-seeds.sh writes the sidecar fuzzer's, so that git holds one
# file.  The sidecar each input starts from holds "pristine" (see
# fuzz-qmp.c).
#
# Usage: fuzz-qmp-seeds.sh DIR [MAX_LEN]
# (MAX_LEN, the fuzzer's -max_len, is 4096 or more: every seed fits.)
set -euo pipefail

dir="${1:?usage: fuzz-qmp-seeds.sh DIR [MAX_LEN]}"
mkdir -p "$dir"

NEGOTIATE='{"execute": "qmp_capabilities"}'

# seed NAME: the negotiation, then standard input, as seed NAME.
seed ()
{
  { echo "$NEGOTIATE"; cat; } > "$dir/$1"
}
# raw NAME: standard input as it is (negotiation included or not).
raw ()
{
  cat > "$dir/$1"
}

# test-qmp-protocol.sh: negotiation, "id", malformed input.
raw negotiation <<'EOF'
{"execute": "query-dirty-bitmaps", "id": 1}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "early"}}
{"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}
{"execute": "qmp_capabilities", "arguments": {"bogus": 1}}
{"execute": "qmp_capabilities", "arguments": {"enable": "oob"}}
{"execute": "qmp_capabilities", "arguments": {"enable": [1]}}
{"execute": "qmp_capabilities", "id": "n"}
{"execute": "qmp_capabilities"}
{"execute": "query-dirty-bitmaps"}
EOF
seed ids <<'EOF'
{"execute": "query-dirty-bitmaps", "id": 7}
{"execute": "query-dirty-bitmaps", "id": -3}
{"execute": "query-dirty-bitmaps", "id": 9007199254740992}
{"execute": "no-such-command", "id": 1.5}
{"execute": "block-dirty-bitmap-remove", "arguments": {"name": "nope"}, "id": "abc"}
{"execute": "query-dirty-bitmaps", "id": ""}
{"execute": "query-dirty-bitmaps", "id": {"a": [1, {"b": null}]}}
{"execute": "no-such-command", "id": [1, "x"]}
{"execute": "query-dirty-bitmaps", "id": true}
{"execute": "query-dirty-bitmaps", "id": null}
{"execute": "query-block"}
EOF
seed malformed <<'EOF'
{"execute": "query-dirty-bitmaps",,}
{"execute": query-dirty-bitmaps}
}
{'execute': 'query-dirty-bitmaps'}
{"execute": "query-dirty-bitmaps", "id": NaN}
{"execute": "query-dirty-bitmaps", "id": -Infinity}
{"execute": "query-dirty-bitmaps" "x"}
{"execute": "query-dirty-bitmaps", "id": 4}{"execute": "query-dirty-bitmaps", "id": 5}
{"execute": "query-dirty-bitmaps",
 "id": 6}
EOF
seed not-commands <<'EOF'
[1, 2]
"query-dirty-bitmaps"
42
null
true
{}
{"arguments": {}}
{"execute": 1}
{"execute": null}
{"execute": "query-dirty-bitmaps", "arguments": []}
{"execute": "query-dirty-bitmaps", "arguments": "x"}
{"execute": "query-dirty-bitmaps", "bogus": 1}
{"exec-oob": "query-dirty-bitmaps"}
{"execute": "qmp_capabilities"}
EOF
seed bad-arguments <<'EOF'
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "x", "bogus": 1}}
{"execute": "query-dirty-bitmaps", "arguments": {"name": "x"}}
{"execute": "x-dirtybitmap-store", "arguments": {"force": true}}
{"execute": "block-dirty-bitmap-remove", "arguments": {"name": "x", "granularity": 4096}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": 5}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": null}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "x", "granularity": "4096"}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "x", "granularity": 4096.0}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "x", "persistent": "yes"}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "x", "disabled": 1}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "x", "node": 0}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "x", "bitmaps": "y"}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "x", "offset": "0"}}
{"execute": "transaction", "arguments": {"actions": {}}}
{"execute": "block-dirty-bitmap-add", "arguments": {}}
{"execute": "block-dirty-bitmap-add", "arguments": {"granularity": 4096}}
{"execute": "block-dirty-bitmap-clear", "arguments": {}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"bitmaps": []}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "x"}}
{"execute": "x-dirtybitmap-extents", "arguments": {}}
{"execute": "transaction", "arguments": {}}
{"execute": "block-dirty-bitmap-enable", "arguments": {"no-such-key": 1}}
{"execute": "nonesuch", "arguments": {}}
{"execute": "qmp_capabilities", "arguments": {}}
EOF

# test-qmp-commands.sh: adding, refusing, removing.
seed add <<'EOF'
{"execute": "query-dirty-bitmaps"}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "def"}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "g4k", "granularity": 4096}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "pers", "persistent": true}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "off", "disabled": true}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "fine", "granularity": 512, "persistent": true, "disabled": false, "node": ""}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "coarse", "granularity": 2147483648, "persistent": false, "disabled": true}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "huge", "granularity": 2147483648}}
{"execute": "query-dirty-bitmaps"}
EOF
seed add-refused <<'EOF'
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "def"}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "def", "persistent": true}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "pristine"}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "bad", "granularity": 0}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "bad", "granularity": 1000}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "bad", "granularity": 511}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "bad", "granularity": 4294967296}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "bad", "granularity": 196608}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "bad", "granularity": 9223372036854775807}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "bad", "granularity": -4096}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": ""}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "nbdkit-dirtybitmap-journal"}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "nbdkit-dirtybitmap-journal", "persistent": true}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "n1", "node": "other"}}
{"execute": "query-dirty-bitmaps"}
EOF
# long_names SEED NAME...: adding a bitmap of each name (in two seeds,
# each within 4096 bytes).
long_names ()
{
  local seed="$1"

  shift
  {
    echo "$NEGOTIATE"
    printf '{"execute": "block-dirty-bitmap-add", "arguments": {"name": "%s"}}\n' "$@"
    echo '{"execute": "query-dirty-bitmaps"}'
  } > "$dir/$seed"
}
long_names long-names "$(printf 'a%.0s' $(seq 1023))" \
  "$(printf 'a%.0s' $(seq 1024))"
long_names long-names-utf8 "$(printf '\xc3\xa9%.0s' $(seq 511))b" \
  "$(printf '\xc3\xa9%.0s' $(seq 512))"
seed missing <<'EOF'
{"execute": "block-dirty-bitmap-remove", "arguments": {"name": "ghost"}}
{"execute": "block-dirty-bitmap-clear", "arguments": {"name": "ghost"}}
{"execute": "block-dirty-bitmap-enable", "arguments": {"name": "ghost"}}
{"execute": "block-dirty-bitmap-disable", "arguments": {"name": "ghost"}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "ghost"}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "ghost", "bitmaps": ["pristine"]}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "pristine", "bitmaps": ["ghost"]}}
{"execute": "block-dirty-bitmap-remove", "arguments": {"name": "PRISTINE"}}
EOF
seed node <<'EOF'
{"execute": "block-dirty-bitmap-remove", "arguments": {"name": "pristine", "node": "other"}}
{"execute": "block-dirty-bitmap-clear", "arguments": {"name": "pristine", "node": "other"}}
{"execute": "block-dirty-bitmap-enable", "arguments": {"name": "pristine", "node": "other"}}
{"execute": "block-dirty-bitmap-disable", "arguments": {"name": "pristine", "node": "other"}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "pristine", "bitmaps": [], "node": "other"}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "pristine", "bitmaps": [{"node": "other", "name": "pristine"}]}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "pristine", "node": "other"}}
{"execute": "block-dirty-bitmap-add", "arguments": {"node": "", "name": "n1"}}
{"execute": "x-dirtybitmap-extents", "arguments": {"node": "", "name": "n1"}}
{"execute": "block-dirty-bitmap-remove", "arguments": {"node": "", "name": "n1"}}
EOF
seed clear-enable-disable <<'EOF'
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "g4k", "granularity": 4096}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "off", "disabled": true, "persistent": true}}
{"execute": "block-dirty-bitmap-clear", "arguments": {"name": "pristine"}}
{"execute": "block-dirty-bitmap-clear", "arguments": {"name": "pristine"}}
{"execute": "block-dirty-bitmap-clear", "arguments": {"name": "off"}}
{"execute": "block-dirty-bitmap-disable", "arguments": {"name": "g4k"}}
{"execute": "block-dirty-bitmap-disable", "arguments": {"name": "g4k"}}
{"execute": "block-dirty-bitmap-enable", "arguments": {"name": "g4k"}}
{"execute": "block-dirty-bitmap-enable", "arguments": {"name": "off"}}
{"execute": "block-dirty-bitmap-disable", "arguments": {"name": "pristine"}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "g4k"}}
{"execute": "query-dirty-bitmaps"}
EOF
seed merge <<'EOF'
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "g4k", "granularity": 4096}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "m64", "disabled": true}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "m4", "granularity": 4096, "disabled": true}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "m512", "granularity": 512, "disabled": true, "persistent": true}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "h2g", "granularity": 2147483648, "disabled": true}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "m64", "bitmaps": ["g4k"]}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "m4", "bitmaps": [{"node": "", "name": "pristine"}]}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "m512", "node": "", "bitmaps": ["pristine", {"name": "g4k"}, {"node": "", "name": "h2g"}, "m4"]}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "m64", "bitmaps": []}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "m64", "bitmaps": ["m64"]}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "h2g", "bitmaps": ["m512"]}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "m4", "bitmaps": ["g4k", "ghost"]}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "m4", "bitmaps": ["g4k", 5]}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "m4", "bitmaps": [{}]}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": "m4", "bitmaps": [{"name": "g4k", "bogus": 1}]}}
{"execute": "block-dirty-bitmap-merge", "arguments": {"target": 4, "bitmaps": []}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "m512"}}
{"execute": "query-dirty-bitmaps"}
EOF
seed extents <<'EOF'
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "p", "granularity": 512}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "pristine", "offset": 1000, "length": 2000000}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "pristine", "offset": 65535, "length": 2}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "pristine", "offset": 10, "length": 9223372036854775807}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "pristine", "offset": 0, "length": 0}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "pristine", "offset": 2097152}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "pristine", "offset": 2097153}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "pristine", "offset": 4611686018427387904}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "pristine", "offset": -1}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "pristine", "length": -1}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "p"}}
{"execute": "x-dirtybitmap-extents", "arguments": {"name": "p", "offset": 524288}}
EOF
seed transaction <<'EOF'
{"execute": "transaction", "arguments": {"actions": []}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"name": "cp", "persistent": true}}, {"type": "block-dirty-bitmap-add", "data": {"name": "frozen", "disabled": true, "granularity": 4096}}, {"type": "block-dirty-bitmap-merge", "data": {"target": "frozen", "bitmaps": ["pristine"]}}, {"type": "block-dirty-bitmap-clear", "data": {"name": "pristine"}}, {"type": "block-dirty-bitmap-disable", "data": {"name": "cp"}}, {"type": "block-dirty-bitmap-enable", "data": {"name": "frozen"}}], "properties": {"completion-mode": "individual"}}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-remove", "data": {"name": "cp"}}, {"type": "block-dirty-bitmap-add", "data": {"name": "cp", "granularity": 65536, "persistent": true}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-remove", "data": {"name": "pristine"}}, {"type": "block-dirty-bitmap-add", "data": {"name": "pristine", "granularity": 512}}]}}
{"execute": "query-dirty-bitmaps"}
EOF
seed transaction-refused <<'EOF'
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"name": "t1"}}, {"type": "block-dirty-bitmap-remove", "data": {"name": "ghost"}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"name": "t1"}}, {"type": "block-dirty-bitmap-add", "data": {"name": "t1"}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-clear", "data": {"name": "pristine"}}, {"type": "block-dirty-bitmap-remove", "data": {"name": "pristine"}}, {"type": "block-dirty-bitmap-enable", "data": {"name": "pristine"}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-disable", "data": {"name": "pristine"}}, {"type": "block-dirty-bitmap-add", "data": {"name": "t1", "granularity": 1000}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-clear", "data": {"name": "pristine"}}, {"type": "block-dirty-bitmap-add", "data": {"name": "t1", "node": "other"}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "query-dirty-bitmaps", "data": {}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "transaction", "data": {"actions": []}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-clear"}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-clear", "data": {"name": "pristine"}}, {"data": {"name": "pristine"}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-clear", "data": []}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": 1, "data": {}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-clear", "data": {"name": "pristine"}, "extra": 1}]}}
{"execute": "transaction", "arguments": {"actions": ["block-dirty-bitmap-clear"]}}
{"execute": "transaction", "arguments": {"actions": [], "properties": {"completion-mode": "grouped"}}}
{"execute": "transaction", "arguments": {"actions": [], "properties": {"other": 1}}}
{"execute": "transaction", "arguments": {"actions": [], "properties": []}}
{"execute": "transaction", "arguments": {"actions": [], "bogus": 1}}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-enable", "data": {"no-such-key": 1}}]}}
{"execute": "query-dirty-bitmaps"}
EOF

# test-view-basic.sh and common/tracker/test-view-transaction.c: views
# added and removed alone and in transactions, and their errors.
seed views <<'EOF'
{"execute": "x-dirtybitmap-view-add", "arguments": {"name": "full"}}
{"execute": "x-dirtybitmap-view-add", "arguments": {"name": "inc", "bitmap": "pristine"}}
{"execute": "x-dirtybitmap-view-add", "arguments": {"name": "full"}}
{"execute": "x-dirtybitmap-view-add", "arguments": {"name": ""}}
{"execute": "x-dirtybitmap-view-add", "arguments": {"name": "x", "bitmap": "ghost"}}
{"execute": "x-dirtybitmap-view-add", "arguments": {"name": "x", "bitmap": 1}}
{"execute": "x-dirtybitmap-view-add", "arguments": {"name": "x", "node": ""}}
{"execute": "x-dirtybitmap-query-views"}
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"name": "cp2"}}, {"type": "block-dirty-bitmap-disable", "data": {"name": "pristine"}}, {"type": "x-dirtybitmap-view-remove", "data": {"name": "inc"}}, {"type": "x-dirtybitmap-view-add", "data": {"name": "inc", "bitmap": "pristine"}}]}}
{"execute": "transaction", "arguments": {"actions": [{"type": "x-dirtybitmap-view-add", "data": {"name": "v2"}}, {"type": "block-dirty-bitmap-add", "data": {"name": "t", "granularity": 3}}]}}
{"execute": "x-dirtybitmap-view-remove", "arguments": {"name": "full"}}
{"execute": "x-dirtybitmap-view-remove", "arguments": {"name": "full"}}
{"execute": "x-dirtybitmap-query-views", "arguments": {"x": 1}}
{"execute": "x-dirtybitmap-query-views"}
EOF

# test-qmp-store.sh, test-qmp-restart.sh, test-qmp-many-bitmaps.sh.
seed store <<'EOF'
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "kept", "persistent": true, "granularity": 4096}}
{"execute": "x-dirtybitmap-store"}
{"execute": "block-dirty-bitmap-disable", "arguments": {"name": "kept"}}
{"execute": "x-dirtybitmap-store"}
{"execute": "block-dirty-bitmap-remove", "arguments": {"name": "pristine"}}
{"execute": "x-dirtybitmap-store"}
{"execute": "query-dirty-bitmaps"}
EOF
seed many <<'EOF'
{"execute": "transaction", "arguments": {"actions": [{"type": "block-dirty-bitmap-add", "data": {"name": "b0", "persistent": true}}, {"type": "block-dirty-bitmap-add", "data": {"name": "b1", "persistent": true, "granularity": 512}}, {"type": "block-dirty-bitmap-add", "data": {"name": "b2", "persistent": true, "disabled": true}}, {"type": "block-dirty-bitmap-add", "data": {"name": "b3", "granularity": 1048576}}]}}
{"execute": "block-dirty-bitmap-remove", "arguments": {"name": "b1"}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "b1", "persistent": true}}
{"execute": "query-dirty-bitmaps"}
EOF

# The UTF-8 cases: a name with a character out of the BMP, escapes
# (a lone surrogate escape, which json-c makes U+FFFD), and raw bytes
# that json-c lets through but are not UTF-8 (an overlong form, a
# surrogate, a code point past U+10FFFF), in a name, a key and an id.
seed utf8 <<'EOF'
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "x\ud83d\ude00\u00e9"}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "\ud800", "persistent": true}}
{"execute": "block-dirty-bitmap-add", "arguments": {"name": "a\u0000b"}}
{"execute": "query-dirty-bitmaps"}
EOF
{
  echo "$NEGOTIATE"
  printf '{"execute": "block-dirty-bitmap-add", "arguments": {"name": "\xc0\xaf"}}\n'
  printf '{"execute": "block-dirty-bitmap-add", "arguments": {"name": "\xed\xa0\x80", "persistent": true}}\n'
  printf '{"execute": "query-dirty-bitmaps", "id": "\xf4\x90\x80\x80"}\n'
  printf '{"execute": "block-dirty-bitmap-add", "arguments": {"\xe0\x80\x80": 1}}\n'
  echo '{"execute": "query-dirty-bitmaps"}'
} > "$dir/utf8-raw"
# Errors quote at most 64 bytes of a client's text: cut in the middle
# of a character here.
x62="$(printf 'x%.0s' $(seq 62))"
printf '{"execute": "qmp_capabilities", "arguments": {"enable": ["%s\xe2\x82\xac"]}}
{"execute": "qmp_capabilities", "arguments": {"%s\xe2\x82\xac": 1}}
{"execute": "query-dirty-bitmaps", "%s\xe2\x82\xac": 1}
' "$x62" "$x62" "$x62" > "$dir/utf8-cut"
