#!/usr/bin/env bash
# Installs what mobagen needs to build and test from Debian packages, when it is missing.
# The CUDA toolkit (NVRTC) is not a Debian package here: it is expected under CUDA_HOME or
# /usr/local/cuda, and mobagen says so clearly when it is not there.
set -euo pipefail
need=()
for pc in lua5.4:liblua5.4-dev yaml-0.1:libyaml-dev libsodium:libsodium-dev cmocka:libcmocka-dev \
          sqlite3:libsqlite3-dev; do
    pkg-config --exists "${pc%%:*}" 2>/dev/null || need+=("${pc#*:}")
done
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v cc >/dev/null || need+=(gcc)
command -v g++ >/dev/null || need+=(g++)          # the C++ link test of mobagen.h
command -v nm >/dev/null || need+=(binutils)      # nm and readelf: the exported-symbols test
command -v make >/dev/null || need+=(make)
command -v clang >/dev/null || need+=(clang)
updated=
install() {
    echo "setup: installing $*"
    if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
    [ -n "$updated" ] || $SUDO apt-get update -qq
    updated=1
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
[ ${#need[@]} -eq 0 ] || install "${need[@]}"
# The fuzz targets (make test runs them) need clang's libFuzzer and sanitizer runtimes, which
# Debian ships apart from clang, in libclang-rt-MAJOR-dev (bookworm: clang 14).
fuzz_runtime_works() {
    local probe
    probe=$(mktemp)
    echo 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }' |
        clang -x c -fsanitize=fuzzer,address,undefined -o "$probe" - >/dev/null 2>&1
    local rc=$?
    rm -f "$probe"
    return $rc
}
if ! fuzz_runtime_works; then
    install "libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev"
    fuzz_runtime_works || { echo "setup: clang cannot build libFuzzer targets" >&2; exit 1; }
fi
cuda=${CUDA_HOME:-/usr/local/cuda}
if ! ls "$cuda"/lib64/libnvrtc.so* >/dev/null 2>&1; then
    echo "setup: warning: no NVRTC under $cuda/lib64; set CUDA_HOME to a CUDA toolkit (12.x or 13.x)" >&2
fi
