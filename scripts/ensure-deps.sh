#!/bin/sh
# Makes sure the build dependencies are present: installs the Debian
# packages when run as root, otherwise prints the exact command and fails.
missing=""
[ -f /usr/include/uthash.h ] || missing="$missing uthash-dev"
[ -f /usr/include/cmocka.h ] || missing="$missing libcmocka-dev"
cuda_inc="${CUDA_HOME:-/usr/local/cuda}/include"
if [ ! -f "$cuda_inc/cuda.h" ]; then
    echo "nvipcfix: the CUDA Toolkit headers are missing ($cuda_inc/cuda.h);" >&2
    echo "          install the CUDA Toolkit or set CUDA_HOME" >&2
    exit 1
fi
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "nvipcfix: installing$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    exit $?
fi
echo "nvipcfix: missing build dependencies; run:" >&2
echo "    sudo apt-get install -y$missing" >&2
exit 1
