#!/bin/sh
# Makes sure what a make target needs is present: installs the Debian
# packages when run as root, otherwise prints the exact command and fails.
# Several sets may be named at once (one apt-get for all of them).
#   ensure-deps.sh          building the library: uthash-dev, CUDA headers
#   ensure-deps.sh test     the CPU test tier: libcmocka-dev, valgrind, strace, python3
#   ensure-deps.sh fuzz     clang with libFuzzer
#   ensure-deps.sh aarch64  the aarch64 cross compiler, qemu-user and Debian's
#                           arm64 cmocka (multiarch)
#   ensure-deps.sh packages make wheel, make deb, make test-packages: the aarch64
#                           cross compiler, Debian's python3 (/usr/bin/python3, not
#                           a pyenv or conda one) with venv, pip, setuptools and
#                           wheel, and lintian
missing=""
need() { # COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || missing="$missing $2"
}
need_cross() { # the aarch64 cross compiler and its C library
    need aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
    [ -f /usr/aarch64-linux-gnu/include/stdio.h ] || missing="$missing libc6-dev-arm64-cross"
}
need_python_module() { # MODULE PACKAGE: importable by Debian's python3
    /usr/bin/python3 -c "import $1" >/dev/null 2>&1 || missing="$missing $2"
}
need_header() { # HEADER PACKAGE: found by the compiler (CPATH counts too)
    echo "#include <$1>" | ${CC:-cc} -E -x c - >/dev/null 2>&1 || missing="$missing $2"
}
[ $# -gt 0 ] || set -- build
for mode in "$@"; do
case $mode in
build)
    need_header uthash.h uthash-dev
    cuda_inc="${CUDA_HOME:-/usr/local/cuda}/include"
    if [ ! -f "$cuda_inc/cuda.h" ]; then
        echo "nvipcfix: the CUDA Toolkit headers are missing ($cuda_inc/cuda.h);" >&2
        echo "          install the CUDA Toolkit or set CUDA_HOME" >&2
        exit 1
    fi
    ;;
test)
    need_header cmocka.h libcmocka-dev
    need valgrind valgrind
    need strace strace
    need python3 python3
    ;;
fuzz)
    need clang clang
    [ -n "$(find /usr/lib/llvm-*/lib/clang -name 'libclang_rt.fuzzer-x86_64.a' 2>/dev/null | head -n 1)" ] ||
        missing="$missing libclang-rt-dev"
    ;;
aarch64)
    need_cross
    need qemu-aarch64 qemu-user
    need_header cmocka.h libcmocka-dev
    [ -f /usr/lib/aarch64-linux-gnu/libcmocka.so ] || missing="$missing libcmocka-dev:arm64"
    case $missing in
    *:arm64*) [ "$(id -u)" = 0 ] && ! dpkg --print-foreign-architectures | grep -qx arm64 &&
        dpkg --add-architecture arm64 ;;
    esac
    ;;
packages)
    need_cross
    [ -x /usr/bin/python3 ] || missing="$missing python3"
    need_python_module ensurepip python3-venv
    need_python_module pip python3-pip
    need_python_module setuptools python3-setuptools
    need_python_module wheel python3-wheel
    need lintian lintian
    need x86_64-linux-gnu-objdump binutils
    ;;
*)
    echo "ensure-deps.sh: no such set of packages: $mode" >&2
    exit 2
    ;;
esac
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "nvipcfix: installing$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    exit $?
fi
echo "nvipcfix: missing packages; run:" >&2
echo "    sudo apt-get install -y$missing" >&2
exit 1
