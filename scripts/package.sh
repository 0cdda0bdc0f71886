#!/bin/sh
# Packages what make built for one machine type (make wheel, make deb).
#   package.sh wheel ARCH BUILD_DIR OUT_DIR
#       BUILD_DIR holds libnvipcfix.so, nvipcfix-doctor and the launcher with
#       the release written in (stamped/nvipcfix); writes
#       OUT_DIR/nvipcfix-VERSION-py3-none-manylinux_2_XX_ARCH.whl
#   package.sh deb ARCH BUILD_DIR OUT_DIR
#       BUILD_DIR/deb-root holds make install's tree (PREFIX=/usr,
#       LIBDIR=/usr/lib/ARCH-linux-gnu); writes OUT_DIR/nvipcfix_VERSION_DEBARCH.deb
# ARCH: x86_64 or aarch64. Tools: Debian's own (/usr/bin/python3 with
# python3-pip, python3-setuptools and python3-wheel; dpkg-deb; binutils for
# ARCH), no network.
set -eu
what=$1 arch=$2 B=$(cd "$3" && pwd) out=$4
root=$(cd "$(dirname "$0")/.." && pwd)
version=$(cat "$root/VERSION")
PYTHON=${PYTHON:-/usr/bin/python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
# Dates inside the packages: the last commit's, not the build's.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 1)}
export SOURCE_DATE_EPOCH

# The highest GLIBC_ symbol version the given ELF files need.
glibc_needed() {
    "$arch-linux-gnu-objdump" -T "$@" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' |
        sort -u -t. -k1,1n -k2,2n -k3,3n | tail -n 1
}

# Debian's strip for shared objects and programs: no symbols, no .comment
# (the aarch64 BTI note, .note.gnu.property, stays).
strip_elf() {
    "$arch-linux-gnu-strip" --remove-section=.comment --remove-section=.note --strip-unneeded "$@"
}

wheel() {
    glibc=$(glibc_needed "$B/libnvipcfix.so" "$B/nvipcfix-doctor")
    [ -n "$glibc" ] || { echo "package.sh: no GLIBC_ version found in the binaries" >&2; exit 1; }
    platform="manylinux_$(echo "$glibc" | cut -d. -f1-2 | tr . _)_$arch"
    stage=$B/wheel-stage
    rm -rf "$stage"
    mkdir -p "$stage/nvipcfix/lib" "$stage/nvipcfix/bin" "$stage/nvipcfix/libexec/nvipcfix"
    for f in pyproject.toml setup.py nvipcfix/__init__.py nvipcfix/__main__.py nvipcfix/py.typed; do
        cp "$root/python/$f" "$stage/$f"
    done
    cp "$root/README.md" "$stage/README.md"
    [ ! -f "$root/LICENSE" ] || cp "$root/LICENSE" "$stage/LICENSE" # setuptools puts it in .dist-info
    echo "$version" >"$stage/VERSION"
    echo "$platform" >"$stage/PLATFORM"
    install -m 0755 "$B/libnvipcfix.so" "$stage/nvipcfix/lib/libnvipcfix.so"
    install -m 0755 "$B/nvipcfix-doctor" "$stage/nvipcfix/libexec/nvipcfix/nvipcfix-doctor"
    install -m 0755 "$B/stamped/nvipcfix" "$stage/nvipcfix/bin/nvipcfix"
    strip_elf "$stage/nvipcfix/lib/libnvipcfix.so" "$stage/nvipcfix/libexec/nvipcfix/nvipcfix-doctor"
    rm -f "$out/nvipcfix-$version-py3-none-"*"_$arch.whl"
    (cd "$stage" && "$PYTHON" -m pip wheel --no-build-isolation --no-deps --no-index \
        --no-cache-dir --disable-pip-version-check -q -w "$out" .)
    echo "$out/nvipcfix-$version-py3-none-$platform.whl (glibc $glibc)"
}

# The Debian changelog (for a native package, changelog.gz) from CHANGELOG.md:
# each "## VERSION (DATE)" with its "- " items; DATE is YYYY-MM-DD, with a
# time ("YYYY-MM-DD HH:MM UTC") where two releases share a day (each entry
# must be dated after the one before it).
debian_changelog() {
    maintainer=$1
    awk -v pkg=nvipcfix -v who="$maintainer" '
        function close_entry() {
            if (ver != "") {
                cmd = "date -u -R -d \"" day "\" 2>/dev/null"; cmd | getline when; close(cmd)
                printf "\n -- %s  %s\n\n", who, when
            }
        }
        /^## [0-9]/ {
            close_entry()
            ver = $2; day = $0; sub(/^[^(]*\(/, "", day); sub(/\).*$/, "", day)
            printf "%s (%s) unstable; urgency=medium\n\n", pkg, ver
            next
        }
        /^- / && ver != "" { sub(/^- /, ""); item = $0; cont = 1; printf "  * %s\n", item; next }
        /^  [^ ]/ && ver != "" && cont { sub(/^ +/, ""); printf "    %s\n", $0; next }
        { cont = 0 }
        END { close_entry() }
    ' "$root/CHANGELOG.md"
}

deb() {
    case $arch in x86_64) debarch=amd64 ;; aarch64) debarch=arm64 ;; *) exit 2 ;; esac
    maintainer=${DEB_MAINTAINER:-nvipcfix maintainers <nvipcfix@users.noreply.github.com>}
    rootfs=$B/deb-root
    doc=$rootfs/usr/share/doc/nvipcfix
    glibc=$(glibc_needed "$rootfs/usr/lib/$arch-linux-gnu/libnvipcfix.so" \
        "$rootfs/usr/libexec/nvipcfix/nvipcfix-doctor")
    strip_elf "$rootfs/usr/lib/$arch-linux-gnu/libnvipcfix.so" \
        "$rootfs/usr/libexec/nvipcfix/nvipcfix-doctor"
    chmod 0644 "$rootfs/usr/lib/$arch-linux-gnu/libnvipcfix.so"
    gzip -9n "$rootfs/usr/share/man/man1/nvipcfix.1"
    rm -f "$doc/LICENSE" "$rootfs/usr/libexec/nvipcfix/installed" # in copyright; make install's own list
    install -m 0644 "$root/packaging/debian-copyright" "$doc/copyright"
    install -m 0644 "$root/CHANGELOG.md" "$doc/CHANGELOG.md"
    debian_changelog "$maintainer" | gzip -9n >"$doc/changelog.gz"
    find "$doc" -name '*.md' -size +4k -exec gzip -9n {} +
    install -D -m 0644 "$root/packaging/lintian-overrides" \
        "$rootfs/usr/share/lintian/overrides/nvipcfix"
    mkdir -p "$rootfs/DEBIAN"
    echo "activate-noawait ldconfig" >"$rootfs/DEBIAN/triggers"
    (cd "$rootfs" && find usr -type f | LC_ALL=C sort | xargs md5sum) >"$rootfs/DEBIAN/md5sums"
    cat >"$rootfs/DEBIAN/control" <<EOF
Package: nvipcfix
Version: $version
Architecture: $debarch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$rootfs" | cut -f1)
Depends: libc6 (>= $glibc)
Section: utils
Priority: optional
Description: correct legacy CUDA IPC for unmodified programs (LD_PRELOAD)
 cudaIpcGetMemHandle on a pointer inside a larger cudaMalloc block returns
 the handle of the whole block, and the receiving process silently reads
 and writes the block's base. nvipcfix is a library preloaded into
 unmodified programs (SGLang, vLLM, Mooncake, PyTorch and CuPy scripts)
 that carries the pointer's offset in the handle, so that the receiver gets
 exactly the pointer the sender exported. It links no CUDA library.
 .
 This package holds the library, the nvipcfix launcher (nvipcfix -- COMMAND)
 and nvipcfix doctor.
EOF
    find "$rootfs" -type d -exec chmod 0755 {} +
    rm -f "$out/nvipcfix_${version}_$debarch.deb"
    dpkg-deb --root-owner-group -Zxz --build "$rootfs" "$out/nvipcfix_${version}_$debarch.deb" >/dev/null
    echo "$out/nvipcfix_${version}_$debarch.deb (libc6 >= $glibc)"
}

case $what in
wheel) wheel ;;
deb) deb ;;
*) echo "usage: package.sh wheel|deb ARCH BUILD_DIR OUT_DIR" >&2; exit 2 ;;
esac
