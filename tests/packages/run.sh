#!/bin/sh
# make test-packages: the wheels and the Debian packages make wheel and make
# deb built, installed the way users install them and run on the simulated
# driver. Ends with one line "N passed, N failed[, N skipped]".
# Usage: tests/packages/run.sh BUILD_DIR DIST_DIR
#   wheel: installed into a fresh venv of Debian's /usr/bin/python3 with
#          pip install --no-index, run through the console script,
#          python3 -m nvipcfix and enable() + subprocess, uninstalled;
#   deb:   (as root) dpkg -i, run through /usr/bin/nvipcfix, dpkg --purge.
set -u
B=$(cd "${1:-build}" && pwd)
DIST=$(cd "${2:-$B/dist}" && pwd)
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
VERSION=$(cat "$ROOT/VERSION")
SIM=$B/sim
DEMO=$B/tests/legacy_ipc
OTHER=$B/tests/libother_preload.so
GPU_SHARE=$B/tests/libgpu_share.so
PYTHON=${PYTHON:-/usr/bin/python3}
OUT=$(mktemp -d /tmp/nvipcfix-packages.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
passed=0 failed=0 skipped=0

# run NAME EXPECTED_STATUS COMMAND...: runs COMMAND on the simulated driver,
# stdout and stderr in $OUT/out and $OUT/err; then assertions, then result.
run() {
    name=$1 expect=$2
    shift 2
    LD_LIBRARY_PATH=$SIM "$@" >"$OUT/out" 2>"$OUT/err"
    rc=$?
    ok=1 why=""
    [ "$rc" -eq "$expect" ] || { ok=0; why="exit status $rc, expected $expect"; }
}
has() { # FILE TEXT: the last case's output has TEXT (a grep pattern)
    grep -q -- "$2" "$OUT/$1" || { ok=0; why="${why:+$why; }'$2' not in $1"; }
}
claim() { # NAME TEST...: a case that is a plain test; the output files are cleared
    name=$1
    shift
    : >"$OUT/out"
    : >"$OUT/err"
    ok=1 why=""
    "$@" || { ok=0; why="not true: $*"; }
}
result() {
    if [ "$ok" -eq 1 ]; then
        passed=$((passed + 1))
        echo "[ PASSED ] packages: $name"
    else
        failed=$((failed + 1))
        echo "[ FAILED ] packages: $name: $why"
        sed 's/^/    | /' "$OUT/out" "$OUT/err" | head -20
    fi
}
skip() { # NAME WHY
    skipped=$((skipped + 1))
    echo "[ SKIPPED ] packages: $1: $2"
}

# The highest GLIBC_ symbol version ELF files need, as make wheel computed it.
glibc_needed() { # OBJDUMP FILE...
    tool=$1
    shift
    "$tool" -T "$@" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' |
        sort -u -t. -k1,1n -k2,2n -k3,3n | tail -n 1
}
needs_only_libc() { # FILE: no DT_NEEDED beyond glibc's (never a CUDA library)
    readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' >"$OUT/needed"
    ! grep -qv -e '^libc\.so\.6$' -e '^libdl\.so\.2$' -e '^libpthread\.so\.0$' -e '^ld-linux' "$OUT/needed"
}
machine_is() { # FILE MACHINE (as readelf -h names it)
    readelf -h "$1" | grep -q "Machine: *$2"
}

# ---- the wheels ------------------------------------------------------------
wheel_contents() { # ARCH MACHINE: names, tag, the binaries inside
    arch=$1
    whl=$(ls "$DIST"/nvipcfix-"$VERSION"-py3-none-manylinux_2_*_"$arch".whl 2>/dev/null | head -n 1)
    if [ -z "$whl" ]; then
        claim "wheel $arch: built as nvipcfix-$VERSION-py3-none-manylinux_2_XX_$arch.whl" false
        result
        return 1
    fi
    x="$OUT/unzipped-$arch"
    mkdir -p "$x" && (cd "$x" && unzip -q "$whl")
    glibc=$(glibc_needed "$arch-linux-gnu-objdump" "$x/nvipcfix/lib/libnvipcfix.so" \
        "$x/nvipcfix/libexec/nvipcfix/nvipcfix-doctor")
    tag=manylinux_$(echo "$glibc" | tr . _)_$arch
    claim "wheel $arch: tagged $tag, the highest GLIBC_ version its binaries need" \
        test "$(basename "$whl")" = "nvipcfix-$VERSION-py3-none-$tag.whl"
    result
    older=manylinux_2_$(($(echo "$glibc" | cut -d. -f2) - 1))_$arch
    run "wheel $arch: pip refuses it where glibc is older ($older)" 1 env PIP_NO_CACHE_DIR=1 \
        "$PYTHON" -m pip install --no-index --disable-pip-version-check --only-binary=:all: \
        --platform "$older" --target "$OUT/older-$arch" "$whl"
    has err "is not a supported wheel on this platform"
    result
    claim "wheel $arch: library and doctor built for $2, executable" sh -c "
        readelf -h '$x/nvipcfix/lib/libnvipcfix.so' | grep -q 'Machine: *$2' &&
        readelf -h '$x/nvipcfix/libexec/nvipcfix/nvipcfix-doctor' | grep -q 'Machine: *$2' &&
        test -x '$x/nvipcfix/bin/nvipcfix' && test -f '$x/nvipcfix/py.typed'"
    result
    claim "wheel $arch: no CUDA dependency (DT_NEEDED glibc only, no Requires-Dist)" sh -c "
        ! grep -q '^Requires-Dist' '$x'/nvipcfix-$VERSION.dist-info/METADATA"
    needs_only_libc "$x/nvipcfix/lib/libnvipcfix.so" || { ok=0; why="NEEDED: $(tr '\n' ' ' <"$OUT/needed")"; }
    result
    claim "wheel $arch: the library says its release (strings)" \
        grep -q "nvipcfix version $VERSION" "$x/nvipcfix/lib/libnvipcfix.so"
    result
    WHEEL=$whl
}

# Everything under the venv, for the check that uninstall leaves nothing.
listing() { (cd "$VENV" && find . | LC_ALL=C sort); }

wheel_install() {
    VENV=$OUT/venv
    run "wheel: a fresh venv of Debian's python3" 0 "$PYTHON" -m venv "$VENV"
    result
    [ "$ok" -eq 1 ] || return 1
    listing >"$OUT/venv-before"
    run "wheel: pip install --no-index" 0 env PIP_NO_CACHE_DIR=1 "$VENV/bin/pip" install \
        --no-index --disable-pip-version-check "$WHEEL"
    has out "Successfully installed nvipcfix-$VERSION"
    result
    [ "$ok" -eq 1 ]
}

wheel_runs() {
    NVB=$VENV/bin/nvipcfix PY=$VENV/bin/python
    run "wheel: --version from the console script, -m and __version__ agree" 0 sh -c "
        '$NVB' --version && '$PY' -m nvipcfix --version &&
        '$PY' -c 'import nvipcfix; print(\"nvipcfix\", nvipcfix.__version__)'"
    [ "$(sort -u "$OUT/out")" = "nvipcfix $VERSION" ] || { ok=0; why="versions: $(tr '\n' ' ' <"$OUT/out")"; }
    result
    run "wheel: the demo without nvipcfix shows the bug" 1 "$DEMO"
    has out "WRONG"
    result
    run "wheel: console script: nvipcfix -- demo fixes it, silently" 0 "$NVB" -- "$DEMO"
    has out "read 10/10 right, written 10/10 right, 0 stray bytes"; has out "CORRECT"
    [ -s "$OUT/err" ] && { ok=0; why="stderr not empty"; }
    result
    run "wheel: console script: --mode audit --log info --stats" 1 "$NVB" --mode audit \
        --log info --stats -- "$DEMO"
    has err "active: nvipcfix $VERSION, mode audit"; has err "audit: export of"
    has err "stats: exports=10"
    result
    run "wheel: console script: --vmm --log-file" 0 "$NVB" --vmm --log info \
        --log-file "$OUT/log.%p" -- "$B/tests/vmm_ipc"
    has out "right 6/6, failed 0, wrong 0, stray 0"
    cat "$OUT"/log.* >"$OUT/err" 2>/dev/null; has err "VMM export on"
    result
    run "wheel: console script: a bad option, exit 2" 2 "$NVB" --mode fixx -- true
    has err "nvipcfix: --mode must be fix, audit or off, not 'fixx'"
    result
    run "wheel: python3 -m nvipcfix -- demo fixes it" 0 "$PY" -m nvipcfix -- "$DEMO"
    has out "CORRECT"
    result
    run "wheel: nvipcfix doctor finds its program and the wheel's library" 0 "$NVB" doctor
    has out "All good"; has out "nvipcfix:     $VENV/lib/python3.*/site-packages/nvipcfix/lib/libnvipcfix.so (version $VERSION)"
    has out "^nvipcfix $VERSION doctor"
    result
}

# enable() + subprocess: SCRIPT runs in the venv's python, whose children
# must get the fix; the calling process itself is not covered.
ENABLE_DEMO='import nvipcfix, os, subprocess, sys
assert not nvipcfix.active(), "active before enable()"
value = nvipcfix.enable()
assert nvipcfix.enable() == value, "a second enable() changed LD_PRELOAD"
print("LD_PRELOAD=" + os.environ["LD_PRELOAD"])
assert not nvipcfix.active(), "enable() cannot load it into this process"
child = subprocess.run([sys.executable, "-c", "import nvipcfix; print(\"child active:\", nvipcfix.active())"])
sys.exit(subprocess.run(sys.argv[1:]).returncode or child.returncode)'
ENABLE_OTHER='import nvipcfix, os, subprocess, sys
print("active here:", nvipcfix.active())
nvipcfix.enable()
print("LD_PRELOAD=" + os.environ["LD_PRELOAD"])
sys.exit(subprocess.run(sys.argv[1:]).returncode)'
wheel_enable() {
    lib=$("$VENV/bin/python" -c 'import nvipcfix; print(nvipcfix.library_path())')
    run "wheel: enable() + subprocess fixes the demo; children active, the caller not" 0 \
        "$VENV/bin/python" -c "$ENABLE_DEMO" "$DEMO"
    has out "^LD_PRELOAD=$lib\$"; has out "child active: True"; has out "CORRECT"
    result
    run "wheel: enable() with another library in LD_PRELOAD: nvipcfix first, the other kept" 0 \
        env LD_PRELOAD="$OTHER" "$VENV/bin/python" -c "$ENABLE_DEMO" "$DEMO"
    has out "^LD_PRELOAD=$lib:$OTHER\$"; has out "CORRECT"; has err "other_preload: [1-9][0-9]* calls seen"
    result
    run "wheel: enable() replaces another libnvipcfix.so behind a library, as the launcher" 0 \
        env LD_PRELOAD="$OTHER $B/libnvipcfix.so" "$VENV/bin/python" -c "$ENABLE_OTHER" "$DEMO"
    has out "^LD_PRELOAD=$lib:$OTHER\$"; has out "^active here: True\$"; has out "CORRECT"
    result
}

# docs/deployment.md: an init container copies the library into a shared
# volume; HAMi-core's /etc/ld.so.preload beside nvipcfix's LD_PRELOAD.
etc_preload() { # LINES_FILE COMMAND...: COMMAND with /etc/ld.so.preload holding those lines
    mkdir -p "$OUT/etc" && cp /etc/ld.so.cache "$OUT/etc/" && cp "$1" "$OUT/etc/ld.so.preload"
    shift
    unshare -m sh -c 'mount --bind "$0" /etc && exec "$@"' "$OUT/etc" "$@"
}
wheel_deployment() {
    lib=$("$VENV/bin/python" -c 'import nvipcfix; print(nvipcfix.library_path())')
    mkdir -p "$OUT/shared" && cp "$lib" "$OUT/shared/"
    run "deployment: the library copied into a shared folder, LD_PRELOAD from there" 0 \
        env LD_PRELOAD="$OUT/shared/libnvipcfix.so" "$DEMO"
    has out "CORRECT"
    result
    if [ "$(id -u)" != 0 ] || ! unshare -m true 2>/dev/null; then
        skip "deployment: /etc/ld.so.preload cases" "need root and unshare -m"
        return
    fi
    echo "$GPU_SHARE" >"$OUT/lines"
    run "deployment: HAMi-like layer in /etc/ld.so.preload, nvipcfix in LD_PRELOAD: nvipcfix first" 0 \
        etc_preload "$OUT/lines" sh -c "'$VENV/bin/nvipcfix' doctor && '$VENV/bin/nvipcfix' -- '$DEMO'"
    has out "preload order: ok"; has out "All good"; has out "CORRECT"; has err "gpu_share: .* IPC opens seen"
    result
    printf '%s\n' "$GPU_SHARE" "$lib" >"$OUT/lines"
    run "deployment: both in /etc/ld.so.preload, the layer's line first: the doctor says so (8)" 8 \
        etc_preload "$OUT/lines" "$(dirname "$lib")/../libexec/nvipcfix/nvipcfix-doctor"
    has out "preload order: WRONG"; has out "FAILED: the importer read wrong bytes"
    result
}

wheel_uninstall() {
    run "wheel: pip uninstall leaves nothing of nvipcfix in the venv" 0 \
        "$VENV/bin/pip" uninstall -y --disable-pip-version-check nvipcfix
    listing >"$OUT/venv-after"
    # What is new since before the install: only bytecode pip wrote for itself.
    comm -13 "$OUT/venv-before" "$OUT/venv-after" >"$OUT/new"
    { grep -i nvipcfix "$OUT/new"; grep -v -e '/__pycache__$' -e '\.pyc$' "$OUT/new"; } >"$OUT/left"
    [ -s "$OUT/left" ] && { ok=0; why="left in the venv: $(sort -u "$OUT/left" | head -5 | tr '\n' ' ')"; }
    result
}

wheel_foreign() { # the aarch64 wheel, on this machine: pip takes it for aarch64
    run "wheel aarch64: pip installs it for manylinux_2_XX_aarch64 (--platform)" 0 env PIP_NO_CACHE_DIR=1 \
        "$PYTHON" -m pip install --no-index --disable-pip-version-check --only-binary=:all: \
        --platform "$(basename "$WHEEL" .whl | sed 's/.*-py3-none-//')" --target "$OUT/aarch64-target" "$WHEEL"
    machine_is "$OUT/aarch64-target/nvipcfix/lib/libnvipcfix.so" AArch64 || { ok=0; why="not AArch64"; }
    result
}

if wheel_contents x86_64 "Advanced Micro Devices X86-64"; then
    wheel_install && wheel_runs && wheel_enable && wheel_deployment
    [ -d "${VENV:-/nonexistent}" ] && wheel_uninstall
fi
wheel_contents aarch64 AArch64 && wheel_foreign

# ---- the Debian packages ---------------------------------------------------
deb_lint() { # DEB
    lintian --pedantic -I "$1" >"$OUT/out" 2>"$OUT/err"
    name="deb $(basename "$1"): lintian reports no errors"
    ok=1 why=""
    grep -q '^E:' "$OUT/out" && { ok=0; why="errors"; }
    echo "    lintian $(basename "$1"): $(grep -c '^E:' "$OUT/out") errors, $(grep -c '^W:' "$OUT/out") warnings, $(grep -c '^I:' "$OUT/out") info"
    result
}
deb_files_ok() { # DEB UNPACKED TRIPLET MACHINE
    test "$(dpkg-deb -f "$1" Version)" = "$VERSION" &&
        test -f "$2/usr/lib/$3/libnvipcfix.so" && test -x "$2/usr/bin/nvipcfix" &&
        test -x "$2/usr/libexec/nvipcfix/nvipcfix-doctor" &&
        zcat "$2/usr/share/man/man1/nvipcfix.1.gz" | head -n 1 | grep -q "\"nvipcfix $VERSION\"" &&
        test -f "$2/usr/share/doc/nvipcfix/copyright" && test -f "$2/usr/share/doc/nvipcfix/changelog.gz" &&
        machine_is "$2/usr/lib/$3/libnvipcfix.so" "$4"
}
deb_contents() { # DEB TRIPLET MACHINE
    x="$OUT/deb-$2"
    dpkg-deb -x "$1" "$x"
    claim "deb $(basename "$1"): files in their places, version $VERSION, library for $3" \
        deb_files_ok "$1" "$x" "$2" "$3"
    needs_only_libc "$x/usr/lib/$2/libnvipcfix.so" || { ok=0; why="NEEDED: $(tr '\n' ' ' <"$OUT/needed")"; }
    result
}

# Paths of the package that did not exist before it was installed: after
# dpkg --purge none of them may be there (files and folders both).
deb_install_cycle() { # DEB
    dpkg-deb -c "$1" | awk '{print $NF}' | sed 's|^\./|/|; s|/$||' | grep -v '^$' >"$OUT/paths"
    : >"$OUT/new-paths"
    while read -r p; do [ -e "$p" ] || echo "$p" >>"$OUT/new-paths"; done <"$OUT/paths"
    run "deb: dpkg -i" 0 dpkg -i "$1"
    result
    [ "$ok" -eq 1 ] || return
    run "deb: /usr/bin/nvipcfix --version" 0 /usr/bin/nvipcfix --version
    has out "^nvipcfix $VERSION\$"
    result
    run "deb: /usr/bin/nvipcfix -- demo fixes it with /usr/lib/*/libnvipcfix.so" 0 \
        /usr/bin/nvipcfix --log info -- "$DEMO"
    has out "CORRECT"; has err "active: nvipcfix $VERSION"
    result
    run "deb: nvipcfix doctor" 0 /usr/bin/nvipcfix doctor
    has out "All good"; has out "nvipcfix:     /usr/lib/.*-linux-gnu/libnvipcfix.so (version $VERSION)"
    result
    run "deb: dpkg --purge leaves no file or folder of it" 0 dpkg --purge nvipcfix
    while read -r p; do
        [ -e "$p" ] || [ -L "$p" ] && { ok=0; why="${why:+$why; }left: $p"; }
    done <"$OUT/new-paths"
    dpkg -s nvipcfix >/dev/null 2>&1 && { ok=0; why="dpkg still knows nvipcfix"; }
    ls /var/lib/dpkg/info/nvipcfix.* >/dev/null 2>&1 && { ok=0; why="dpkg's own files of it are left"; }
    result
}

amd64=$DIST/nvipcfix_${VERSION}_amd64.deb arm64=$DIST/nvipcfix_${VERSION}_arm64.deb
for deb in "$amd64" "$arm64"; do
    [ -f "$deb" ] || { claim "deb $(basename "$deb"): built" false; result; }
done
[ -f "$amd64" ] && deb_lint "$amd64" && deb_contents "$amd64" x86_64-linux-gnu "Advanced Micro Devices X86-64"
[ -f "$arm64" ] && deb_lint "$arm64" && deb_contents "$arm64" aarch64-linux-gnu AArch64
if [ "$(id -u)" != 0 ]; then
    skip "deb: dpkg -i, demo, dpkg --purge" "needs root"
elif dpkg -s nvipcfix >/dev/null 2>&1; then
    skip "deb: dpkg -i, demo, dpkg --purge" "an nvipcfix package is installed here already; not touching it"
elif [ "$(dpkg --print-architecture)" != amd64 ]; then
    skip "deb: dpkg -i, demo, dpkg --purge" "this machine is not amd64"
elif [ -f "$amd64" ]; then
    deb_install_cycle "$amd64"
fi

if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
