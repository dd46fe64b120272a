#!/usr/bin/env bash
# valgrind_leak.sh - memcheck must see the blocks of hmalloc built with -Dvalgrind=true.
#
# usage: valgrind_leak.sh VALGRIND_OPTION(0|1) LIBHMALLOC_SO LEAK_EXE
# Runs leak.c under memcheck with libhmalloc.so preloaded:
#   1. leaking run: memcheck exits with --error-exitcode and reports exactly the lost blocks
#      ("definitely lost: 350,100 bytes in 3 blocks": one small, one medium, one large) and
#      no other kind of error;
#   2. clean run (everything freed): no error and nothing definitely lost.
# Exit 77 (meson: skipped) when the library was built without -Dvalgrind=true or valgrind
# is not installed.  --soname-synonyms=somalloc=nouserintercepts keeps memcheck from
# replacing hmalloc's malloc with its own (see src/vg.h).
set -u
option=$1 so=$2 exe=$3
if [ "$option" != 1 ]; then
  echo "SKIP: libhmalloc was built without -Dvalgrind=true (no client requests)"
  exit 77
fi
if ! command -v valgrind >/dev/null; then
  echo "SKIP: valgrind is not installed"
  exit 77
fi
[ -f "$so" ] || { echo "FAIL: $so not found"; exit 1; }
[ -x "$exe" ] || { echo "FAIL: $exe not found"; exit 1; }

log=$(mktemp -d)
trap 'rm -rf "$log"' EXIT
status=0
vg=(valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite
    --errors-for-leak-kinds=definite --error-exitcode=42 --num-callers=20
    --soname-synonyms=somalloc=nouserintercepts)

run() { # name, then the program's arguments
  local name=$1; shift
  LD_PRELOAD=$so "${vg[@]}" --log-file="$log/$name.log" "$exe" "$@"
  echo $? >"$log/$name.rc"
}

fail() {
  echo "FAIL: $*"
  status=1
}

# Errors other than leaks: hmalloc's client requests must not make memcheck complain about
# the program's (valid) accesses, nor about hmalloc's own.
other_errors() {
  grep -E "Invalid (read|write|free)|uninitialised|Mismatched free|overlap|Conditional jump" "$1" | head -5
}

run leak
rc=$(cat "$log/leak.rc")
lost=$(grep -E "definitely lost:" "$log/leak.log" | sed 's/^==[0-9]*== *//')
echo "leaking run: valgrind exit code $rc; $lost"
[ "$rc" = 42 ] || fail "leaking run: expected valgrind's error exit code 42, got $rc"
grep -q "definitely lost: 350,100 bytes in 3 blocks" "$log/leak.log" ||
  fail "leaking run: expected 'definitely lost: 350,100 bytes in 3 blocks', got '${lost:-nothing}'"
errs=$(other_errors "$log/leak.log")
[ -z "$errs" ] || fail "leaking run: memcheck reported other errors: $errs"
[ "$status" = 0 ] || sed 's/^/  | /' "$log/leak.log" | tail -60

run clean clean
rc=$(cat "$log/clean.rc")
summary=$(grep -E "ERROR SUMMARY" "$log/clean.log" | sed 's/^==[0-9]*== *//')
echo "clean run: valgrind exit code $rc; $summary"
[ "$rc" = 0 ] || fail "clean run: expected exit code 0, got $rc"
grep -q "ERROR SUMMARY: 0 errors" "$log/clean.log" || fail "clean run: memcheck reported errors"
if grep -qE "definitely lost: [1-9]" "$log/clean.log"; then
  fail "clean run: memcheck reported a definite leak"
fi
if [ "$rc" != 0 ] || ! grep -q "ERROR SUMMARY: 0 errors" "$log/clean.log"; then
  sed 's/^/  | /' "$log/clean.log" | tail -60
fi

[ "$status" = 0 ] && echo "PASS: memcheck reports hmalloc's leaks and nothing else"
exit $status
