# nvipcfix: make (library), make test (CPU tier), make demo (the main job).

CUDA_HOME ?= /usr/local/cuda
CUDA_INC  ?= $(CUDA_HOME)/include
CC        ?= cc
BUILD     ?= build

# The one place the release is written: library, launcher, doctor, wheel, .deb.
VERSION   := $(shell cat VERSION)

WARN      := -Wall -Wextra -Werror
CFLAGS    ?= -O2 -g
SAN       ?=
CFLAGS    += -std=c11 -D_GNU_SOURCE $(WARN) -fPIC -pthread -I$(CUDA_INC) $(SAN) \
             -DNVIPCFIX_VERSION='"$(VERSION)"'
LIB_CFLAGS := $(CFLAGS) -fvisibility=hidden
# Quiet by default: one short line per file built (make V=1 prints commands).
V         ?= 0
Q         := $(if $(filter 1,$(V)),,@)
say        = $(if $(filter 1,$(V)),,@printf '  %-6s %s\n' $(1) $(2);)

SHIM_SRC    := $(wildcard shim/*.c)
PRELOAD_SRC := $(wildcard preload/*.c)
# The architecture the compiler builds for (aarch64 when CC is a cross
# compiler): the one file of assembly is chosen by it.
ARCH        ?= $(shell $(CC) -dumpmachine | cut -d- -f1)
PRELOAD_ASM := preload/dlsym_entry_$(ARCH).S
LIB         := $(BUILD)/libnvipcfix.so
# shim/ is compiled once per build folder, with the library's flags: the
# library and every unit test link the same objects.
SHIM_OBJ    := $(patsubst %.c,$(BUILD)/obj/%.o,$(SHIM_SRC))
PRELOAD_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(PRELOAD_SRC))
SHIM_HDR    := $(wildcard shim/*.h)
SIM         := $(BUILD)/sim/libcuda.so.1

UNIT_SRC  := $(wildcard tests/unit/test_*.c)
TEST_COMMON := tests/common/test_process.h tests/common/sim_driver_table.h tests/common/unit_skip.h tests/common/test_deadline.h
UNIT_BIN  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
INTEG_BIN := $(BUILD)/tests/legacy_ipc $(BUILD)/tests/rtld_next $(BUILD)/tests/ipc_stress \
             $(BUILD)/tests/ipc_faults $(BUILD)/tests/no_driver $(BUILD)/tests/libother_preload.so \
             $(BUILD)/tests/libfailing_calloc.so $(BUILD)/tests/libmap_hook.so \
             $(BUILD)/tests/fork_safety $(BUILD)/tests/libgpu_share.so $(BUILD)/tests/quota_probe \
             $(BUILD)/tests/libcuda_proxy.so $(BUILD)/tests/liblookalike.so $(BUILD)/tests/vmm_ipc $(BUILD)/tests/entry_owner \
             $(BUILD)/tests/ipc_bench $(BUILD)/tests/libempty_two_segments.so \
             $(BUILD)/tests/liblinked_high.so $(BUILD)/tests/late_driver \
             $(BUILD)/tests/dlopen_close

# The verification copy path tool, when nvcc is here.
NVCC      ?= $(shell command -v nvcc 2>/dev/null || ls $(CUDA_HOME)/bin/nvcc 2>/dev/null)
NVCC_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
VERIFY    := $(BUILD)/nvipcfix-verify

.PHONY: all deps test-deps test demo clean
all: $(LIB) $(if $(NVCC),$(VERIFY))

$(VERIFY): tools/verify_copy_path.cu
	@mkdir -p $(@D)
	$(call say,NVCC,$@)$(NVCC) -O2 -std=c++17 $(NVCC_ARCH) -Xcompiler -Wall,-Wextra,-Werror -o $@ $<

deps:
	@sh scripts/ensure-deps.sh build

test-deps: deps
	@sh scripts/ensure-deps.sh test

$(PRELOAD_ASM):
	@echo "nvipcfix: no dlsym entry for $(ARCH); x86_64 and aarch64 are supported" >&2; exit 1

$(BUILD)/obj/shim/%.o: shim/%.c $(SHIM_HDR) VERSION | deps
	@mkdir -p $(@D)
	$(call say,CC,$<)$(CC) $(LIB_CFLAGS) -c -o $@ $<

$(BUILD)/obj/preload/%.o: preload/%.c $(SHIM_HDR) $(wildcard preload/*.h) VERSION | deps
	@mkdir -p $(@D)
	$(call say,CC,$<)$(CC) $(LIB_CFLAGS) -c -o $@ $<

# Binding: lazy. The library is preloaded into every process of a node and
# most never call it; bound now, each of its ~75 C-library imports was
# looked up at every start-up (about 50,000 instructions, 5 points of the
# start-up of /bin/true: docs/performance.md). Lazily, a process pays the
# look-up of a function the first time it calls it. RELRO still covers the
# pointers bound at load (.got, .data.rel.ro); make LIB_BIND=now restores
# full RELRO for whoever prefers it to the start-up time. Segments: two
# (-z noseparate-code: code, read-only data and headers in one executable
# mapping, then the writable one) instead of four; every process maps the
# library, and each mapping costs at start-up (about 2 points of /bin/true's
# start-up on the CPU machine, 0.8 on the H200: docs/performance.md), at the
# price of read-only data mapped executable. make LIB_LDFLAGS= restores four.
# No DT_FINI: the C runtime's _fini is empty (the destructors, the
# library's __cxa_finalize included, run from .fini_array), and it sits on
# the last page of the code, which every process would fault in at exit
# only to return. -fini names a symbol nothing defines, and GNU ld, gold and
# lld then write no DT_FINI (their behaviour, not documented); make test
# checks the library has none and that .fini_array runs its destructors.
# make LIB_FINI= restores it.
LIB_BIND  ?= lazy
LIB_LDFLAGS ?= -Wl,-z,noseparate-code
LIB_FINI  ?= -Wl,-fini=nvipcfix_has_no_fini
$(LIB): $(SHIM_OBJ) $(PRELOAD_OBJ) $(PRELOAD_ASM)
	@mkdir -p $(@D)
	$(call say,LD,$@)$(CC) $(LIB_CFLAGS) -shared -Wl,-soname,libnvipcfix.so -Wl,-z,$(LIB_BIND) \
	    -Wl,-z,relro -Wl,-z,defs $(LIB_LDFLAGS) $(LIB_FINI) -o $@ $(SHIM_OBJ) $(PRELOAD_OBJ) \
	    $(PRELOAD_ASM) -ldl

# The simulated driver: a test instrument, never installed. -Bsymbolic: its
# cuGetProcAddress table and its calls among its own entry points bind to
# its own functions, as the real driver's do (a preloaded definition of the
# same name never replaces them).
$(SIM): tests/simdrv/simdrv.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -Wl,-soname,libcuda.so.1 -Wl,-Bsymbolic -o $@ $< -ldl

$(BUILD)/tests/test_%: tests/unit/test_%.c $(SHIM_OBJ) $(TEST_COMMON) | test-deps
	@mkdir -p $(@D)
	$(call say,CC,$<)$(CC) $(CFLAGS) -o $@ $< $(SHIM_OBJ) -lcmocka

$(BUILD)/tests/test_vmm_share: tests/unit/test_vmm_share.c $(TEST_COMMON) $(SHIM_OBJ) $(SIM) | test-deps
	@mkdir -p $(@D)
	$(call say,CC,$<)$(CC) $(CFLAGS) -o $@ $< $(SHIM_OBJ) -L$(BUILD)/sim -l:libcuda.so.1 -lcmocka

# preload/'s one file without a call to the loader, tested on the objects
# of the test's own process (the test libraries among them).
$(BUILD)/tests/test_gnu_hash: tests/unit/test_gnu_hash.c $(BUILD)/obj/preload/gnu_hash.o \
    preload/gnu_hash.h tests/common/unit_skip.h | test-deps
	@mkdir -p $(@D)
	$(call say,CC,$<)$(CC) $(CFLAGS) -o $@ $< $(BUILD)/obj/preload/gnu_hash.o -ldl -lcmocka

$(BUILD)/tests/test_simdrv: tests/unit/test_simdrv.c $(SIM) | test-deps
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< -L$(BUILD)/sim -l:libcuda.so.1 -lcmocka

$(BUILD)/tests/legacy_ipc: tests/integration/legacy_ipc.c $(TEST_COMMON) $(SIM)
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< -L$(BUILD)/sim -l:libcuda.so.1 -ldl

$(BUILD)/tests/dlopen_close: tests/integration/dlopen_close.c $(TEST_COMMON) $(SIM)
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< -L$(BUILD)/sim -l:libcuda.so.1 -ldl

$(BUILD)/tests/late_driver: tests/integration/late_driver.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -Wl,--hash-style=sysv -o $@ $< -ldl

$(BUILD)/tests/entry_owner: tests/integration/entry_owner.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< -ldl

VMM_IPC_SHIM := shim/vmm_ticket.c shim/fd_channel.c shim/keyed_hash.c
$(BUILD)/tests/vmm_ipc: tests/integration/vmm_ipc.c $(VMM_IPC_SHIM) $(TEST_COMMON) $(SIM)
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< $(VMM_IPC_SHIM) -L$(BUILD)/sim -l:libcuda.so.1 -ldl

# Everything make test runs, built (make mutants rebuilds it per mutant).
.PHONY: test-build mutants
test-build: $(LIB) $(SIM) $(UNIT_BIN) $(INTEG_BIN) $(BUILD)/nvipcfix-doctor | test-deps

# Mutation testing (not in make test): each small break of preload/ and
# shim/ in tests/mutants/ built and run against the CPU tier in a scratch
# copy; a table of which test caught each; fails if one survives.
mutants:
	@bash scripts/mutants $(MUTANTS)

test: $(LIB) $(SIM) $(UNIT_BIN) $(INTEG_BIN) $(BUILD)/nvipcfix-doctor | test-deps
	@SANITIZER_PRELOAD="$(if $(SANITIZER_RUNTIME),$(shell $(CC) -print-file-name=lib$(SANITIZER_RUNTIME).so))" \
	    sh tests/run-all.sh $(BUILD)

# The whole CPU tier cross-built for aarch64 and run under qemu-user (no
# binfmt: tests/run-all.sh and the test programs start every aarch64
# program through TEST_RUNNER). uthash.h and cmocka.h are the host's
# (architecture-free headers); libcmocka is Debian's arm64 build, whose
# libc6:arm64 also runs the programs: qemu is given no -L, since the cross
# toolchain's older libc next to that loader would hang threads and fork.
AARCH64_CC ?= aarch64-linux-gnu-gcc
AARCH64_LIBDIR ?= /usr/lib/aarch64-linux-gnu
# The host's architecture-free headers, for a cross compiler (which does not
# search /usr/include).
CROSS_INCLUDE := $(BUILD)/cross-include
.PHONY: cross-include
cross-include:
	@mkdir -p $(CROSS_INCLUDE)
	@ln -sf /usr/include/uthash.h /usr/include/cmocka.h $(CROSS_INCLUDE)/
.PHONY: test-aarch64
test-aarch64: cross-include
	@sh scripts/ensure-deps.sh aarch64
	@CPATH=$(abspath $(CROSS_INCLUDE)) $(MAKE) --no-print-directory test \
	    BUILD=$(BUILD)/aarch64 CC=$(AARCH64_CC) ARCH=aarch64 NVCC= \
	    SAN="-L$(AARCH64_LIBDIR) -Wl,-rpath-link,$(AARCH64_LIBDIR)" \
	    TEST_RUNNER=qemu-aarch64

# The whole CPU tier again, built with the sanitizers.
.PHONY: test-asan test-tsan
test-asan:
	@$(MAKE) --no-print-directory test BUILD=$(BUILD)/asan SANITIZER_RUNTIME=asan \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
test-tsan:
	@$(MAKE) --no-print-directory test BUILD=$(BUILD)/tsan SANITIZER_RUNTIME=tsan \
	    SAN="-fsanitize=thread"

demo: $(LIB) $(SIM) $(INTEG_BIN) $(BUILD)/nvipcfix-doctor
	@sh scripts/demo.sh $(BUILD)

clean:
	rm -rf $(BUILD)

# Reliability: stress, faults, another interposer, no driver.
$(BUILD)/tests/ipc_stress: tests/reliability/ipc_stress.c $(TEST_COMMON) $(SIM)
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< -L$(BUILD)/sim -l:libcuda.so.1 -ldl

$(BUILD)/tests/ipc_faults: tests/reliability/ipc_faults.c shim/handle_tag.c $(TEST_COMMON) $(SIM)
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< shim/handle_tag.c -L$(BUILD)/sim -l:libcuda.so.1 -ldl

$(BUILD)/tests/no_driver: tests/reliability/no_driver.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< -ldl

$(BUILD)/tests/libother_preload.so: tests/reliability/other_preload.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -o $@ $< -ldl

$(BUILD)/tests/libmap_hook.so: tests/interposers/map_hook.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -o $@ $< -ldl

$(BUILD)/tests/libfailing_calloc.so: tests/reliability/failing_calloc.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -o $@ $< -ldl

$(BUILD)/tests/fork_safety: tests/reliability/fork_safety.c $(TEST_COMMON) $(SIM)
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< -L$(BUILD)/sim -l:libcuda.so.1 -ldl

# Other interposers: a GPU-sharing layer with its own dlsym and a quota, a
# proxy library, and a program that probes both.
$(BUILD)/tests/libgpu_share.so: tests/interposers/gpu_share.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -o $@ $< -ldl

$(BUILD)/tests/libcuda_proxy.so: tests/interposers/cuda_proxy.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -o $@ $<

$(BUILD)/tests/liblookalike.so: tests/interposers/lookalike.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -o $@ $< -ldl

$(BUILD)/tests/quota_probe: tests/interposers/quota_probe.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< -ldl

# dlsym(RTLD_NEXT) from a library that also defines the name it looks up.
$(BUILD)/tests/rtld_next: tests/integration/rtld_next/main.c tests/integration/rtld_next/probe.c tests/integration/rtld_next/target.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -o $(@D)/libprobe.so tests/integration/rtld_next/probe.c -ldl
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -o $(@D)/libtarget.so tests/integration/rtld_next/target.c
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< -L$(@D) -Wl,--no-as-needed -lprobe -ltarget -Wl,-rpath,'$$ORIGIN' -ldl

# Benchmarks: make bench (GPU when there is one, else the simulated driver).
$(BUILD)/tests/ipc_bench: tests/bench/ipc_bench.c $(TEST_COMMON) $(SIM)
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< -L$(BUILD)/sim -l:libcuda.so.1 -ldl

# A preload that does nothing, linked with the library's segments (two), for
# make test's count of start-up page faults (make bench's empty preload,
# its goal's baseline, has the default four).
$(BUILD)/tests/libempty_two_segments.so: tests/bench/empty_preload.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -Wl,-z,noseparate-code -o $@ $<

# The same, linked to load at the top of the address space: the loader puts
# it below that, so its base (load address less link address) is
# "negative", and the load-order check must still read its table there.
$(BUILD)/tests/liblinked_high.so: tests/bench/empty_preload.c
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -shared -Wl,-Ttext-segment=0x7fffffffc000 -o $@ $<

$(BUILD)/tests/table_memory: tests/bench/table_memory.c $(SHIM_OBJ)
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -o $@ $< $(SHIM_OBJ)

.PHONY: bench
bench: $(LIB) $(SIM) $(BUILD)/tests/ipc_bench $(BUILD)/tests/table_memory $(BUILD)/tests/fork_safety \
       $(BUILD)/tests/vmm_ipc
	@sh scripts/bench.sh $(BUILD) $(BENCH_ARGS)

# Fuzzing (clang's libFuzzer): make fuzz runs FUZZ_RUNS inputs on each
# target, starting from the corpus kept in tests/fuzz/corpus.
FUZZ_CC    ?= clang
FUZZ_RUNS  ?= 10000000
FUZZ_FLAGS := -g -O1 -std=c11 -D_GNU_SOURCE $(WARN) -pthread -I$(CUDA_INC) \
              -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
FUZZERS    := $(BUILD)/fuzz/fuzz_handle_tag $(BUILD)/fuzz/fuzz_open

.PHONY: fuzz-deps
fuzz-deps:
	@sh scripts/ensure-deps.sh fuzz

$(BUILD)/fuzz/fuzz_handle_tag: tests/fuzz/fuzz_handle_tag.c shim/handle_tag.c | fuzz-deps
	@mkdir -p $(@D)
	$(call say,CC,$@)$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $^

$(BUILD)/fuzz/fuzz_open: tests/fuzz/fuzz_open.c $(TEST_COMMON) $(SHIM_SRC) $(SIM) | deps fuzz-deps
	@mkdir -p $(@D)
	$(call say,CC,$@)$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ tests/fuzz/fuzz_open.c $(SHIM_SRC) \
	    -L$(BUILD)/sim -l:libcuda.so.1 -Wl,-rpath,$(abspath $(BUILD)/sim)

.PHONY: fuzz fuzz-smoke
fuzz: $(FUZZERS)
	@for t in handle_tag open; do \
	    mkdir -p $(BUILD)/fuzz/corpus-$$t && cp -n tests/fuzz/corpus/$$t/* $(BUILD)/fuzz/corpus-$$t/ ; \
	    echo "== fuzz_$$t: $(FUZZ_RUNS) inputs"; \
	    $(BUILD)/fuzz/fuzz_$$t -runs=$(FUZZ_RUNS) -print_final_stats=1 \
	        -artifact_prefix=$(BUILD)/fuzz/artifact-$$t- \
	        $(BUILD)/fuzz/corpus-$$t >$(BUILD)/fuzz/$$t.log 2>&1; rc=$$?; \
	    grep -E "^(stat::number_of_executed_units|stat::new_units_added|Done|fuzz_open:)|ERROR|SUMMARY" \
	        $(BUILD)/fuzz/$$t.log; \
	    test $$rc -eq 0 || { tail -n 30 $(BUILD)/fuzz/$$t.log; exit 1; }; \
	done

fuzz-smoke:
	@$(MAKE) --no-print-directory fuzz FUZZ_RUNS=200000

# nvipcfix doctor's program (finds the driver with dlopen; links no CUDA).
DOCTOR := $(BUILD)/nvipcfix-doctor
all: $(DOCTOR)
$(DOCTOR): tools/doctor.c VERSION
	@mkdir -p $(@D)
	$(call say,CC,$@)$(CC) $(CFLAGS) -Wl,-z,now -o $@ $< -ldl

# The launcher and the man page as installed: the release (and for the
# launcher the library's folder, $1; empty: found beside the launcher) written in.
stamp_launcher = sed -e 's|^VERSION=.*|VERSION=$(VERSION)|' -e 's|^LIBDIR=.*|LIBDIR=$1|' tools/nvipcfix
stamp_manpage  = sed '1s/"nvipcfix[^"]*"/"nvipcfix $(VERSION)"/' docs/nvipcfix.1

# make install PREFIX=... [LIBDIR=...] [DESTDIR=...]; make uninstall with the same.
PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
DEST    := $(DESTDIR)$(PREFIX)
# (install-files takes places inside DEST: LIBDIR must lie under PREFIX)
LIBDIR_IN_PREFIX = $(if $(filter $(PREFIX)/%,$(LIBDIR)),$(patsubst $(PREFIX)/%,%,$(LIBDIR)),$(error LIBDIR=$(LIBDIR) is not under PREFIX=$(PREFIX)))
DOCS    := README.md $(wildcard docs/*.md)
.PHONY: install uninstall
install: all
	@mkdir -p $(BUILD)/stamped
	@$(call stamp_launcher,$(LIBDIR)) >$(BUILD)/stamped/nvipcfix
	@$(stamp_manpage) >$(BUILD)/stamped/nvipcfix.1
	@sh scripts/install-files install "$(DEST)" \
	    0755 $(LIB) $(LIBDIR_IN_PREFIX)/libnvipcfix.so \
	    0755 $(BUILD)/stamped/nvipcfix bin/nvipcfix \
	    0755 $(DOCTOR) libexec/nvipcfix/nvipcfix-doctor \
	    $(if $(wildcard $(VERIFY)),0755 $(VERIFY) bin/nvipcfix-verify) \
	    0644 $(BUILD)/stamped/nvipcfix.1 share/man/man1/nvipcfix.1 \
	    $(foreach f,$(DOCS) LICENSE,0644 $(f) share/doc/nvipcfix/$(notdir $(f)))

# Removes what install put there and the folders it created, nothing else
# (the list install wrote: DEST/libexec/nvipcfix/installed).
uninstall:
	@sh scripts/install-files uninstall "$(DEST)"

# Packages, for each machine type in PKG_ARCHES (the aarch64 ones built with
# the cross compiler of make test-aarch64), into $(DIST):
#   make wheel: nvipcfix-VERSION-py3-none-manylinux_2_XX_ARCH.whl
#   make deb:   nvipcfix_VERSION_amd64.deb, nvipcfix_VERSION_arm64.deb
# make test-packages builds both and tests them (tests/packages/run.sh).
PKG_ARCHES ?= x86_64 aarch64
DIST       := $(BUILD)/dist
# $(call pkg_make,ARCH): make for ARCH in its own build folder, no nvcc
# (the recipes that call it start with +: they run make).
pkg_make = CPATH=$(abspath $(CROSS_INCLUDE)) $(MAKE) --no-print-directory BUILD=$(BUILD)/pkg/$1 \
           CC=$1-linux-gnu-gcc ARCH=$1 NVCC=
.PHONY: wheel deb package-deps test-packages
package-deps: cross-include
	@sh scripts/ensure-deps.sh packages
	@sh scripts/ensure-deps.sh build
wheel: package-deps
	+@for a in $(PKG_ARCHES); do \
	    $(call pkg_make,$$a) $(BUILD)/pkg/$$a/libnvipcfix.so $(BUILD)/pkg/$$a/nvipcfix-doctor && \
	    mkdir -p $(BUILD)/pkg/$$a/stamped && $(call stamp_launcher,) >$(BUILD)/pkg/$$a/stamped/nvipcfix && \
	    sh scripts/package.sh wheel $$a $(BUILD)/pkg/$$a $(DIST) || exit 1; \
	done
deb: package-deps
	+@for a in $(PKG_ARCHES); do \
	    rm -rf $(BUILD)/pkg/$$a/deb-root && \
	    $(call pkg_make,$$a) -s install DESTDIR=$(abspath $(BUILD)/pkg/$$a/deb-root) PREFIX=/usr \
	        LIBDIR=/usr/lib/$$a-linux-gnu >/dev/null && \
	    sh scripts/package.sh deb $$a $(BUILD)/pkg/$$a $(DIST) || exit 1; \
	done
# (wheel and deb one after the other: both build in $(BUILD)/pkg)
test-packages: $(LIB) $(SIM) $(BUILD)/tests/legacy_ipc $(BUILD)/tests/vmm_ipc \
               $(BUILD)/tests/libother_preload.so $(BUILD)/tests/libgpu_share.so
	@$(MAKE) --no-print-directory wheel
	@$(MAKE) --no-print-directory deb
	@sh tests/packages/run.sh $(BUILD) $(DIST)
