# nvipcfix: make (library), make test (CPU tier), make demo (the main job).

CUDA_HOME ?= /usr/local/cuda
CUDA_INC  ?= $(CUDA_HOME)/include
CC        ?= cc
BUILD     ?= build

WARN      := -Wall -Wextra -Werror
CFLAGS    ?= -O2 -g
CFLAGS    += -std=c11 -D_GNU_SOURCE $(WARN) -fPIC -pthread -I$(CUDA_INC)
LIB_CFLAGS := $(CFLAGS) -fvisibility=hidden

SHIM_SRC    := $(wildcard shim/*.c)
PRELOAD_SRC := $(wildcard preload/*.c)
PRELOAD_ASM := preload/dlsym_entry_$(shell uname -m).S
LIB         := $(BUILD)/libnvipcfix.so
SIM         := $(BUILD)/sim/libcuda.so.1

UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))
INTEG_BIN := $(BUILD)/tests/legacy_ipc $(BUILD)/tests/rtld_next

# The verification copy path tool, when nvcc is here.
NVCC      ?= $(shell command -v nvcc 2>/dev/null || ls $(CUDA_HOME)/bin/nvcc 2>/dev/null)
NVCC_ARCH ?= -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
             -gencode arch=compute_90,code=compute_90
VERIFY    := $(BUILD)/nvipcfix-verify

.PHONY: all deps test demo clean
all: $(LIB) $(if $(NVCC),$(VERIFY))

$(VERIFY): tools/verify_copy_path.cu
	@mkdir -p $(@D)
	$(NVCC) -O2 -std=c++17 $(NVCC_ARCH) -Xcompiler -Wall,-Wextra,-Werror -o $@ $<

deps:
	@sh scripts/ensure-deps.sh

$(PRELOAD_ASM):
	@echo "nvipcfix: no dlsym entry for $(shell uname -m); only x86_64 is supported" >&2; exit 1

$(LIB): $(SHIM_SRC) $(PRELOAD_SRC) $(PRELOAD_ASM) $(wildcard shim/*.h preload/*.h) | deps
	@mkdir -p $(@D)
	$(CC) $(LIB_CFLAGS) -shared -Wl,-soname,libnvipcfix.so -Wl,-z,now -Wl,-z,defs \
	    -o $@ $(SHIM_SRC) $(PRELOAD_SRC) $(PRELOAD_ASM) -ldl

# The simulated driver: a test instrument, never installed.
$(SIM): tests/simdrv/simdrv.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -shared -Wl,-soname,libcuda.so.1 -o $@ $< -ldl

$(BUILD)/tests/test_%: tests/unit/test_%.c $(SHIM_SRC) $(wildcard shim/*.h tests/unit/*.h) | deps
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(SHIM_SRC) -lcmocka

$(BUILD)/tests/test_simdrv: tests/unit/test_simdrv.c $(SIM) | deps
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< -L$(BUILD)/sim -l:libcuda.so.1 -lcmocka

$(BUILD)/tests/legacy_ipc: tests/integration/legacy_ipc.c $(SIM)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< -L$(BUILD)/sim -l:libcuda.so.1 -ldl

test: $(LIB) $(SIM) $(UNIT_BIN) $(INTEG_BIN)
	@sh tests/run-all.sh $(BUILD)

demo: $(LIB) $(SIM) $(INTEG_BIN)
	@sh scripts/demo.sh $(BUILD)

clean:
	rm -rf $(BUILD)

# dlsym(RTLD_NEXT) from a library that also defines the name it looks up.
$(BUILD)/tests/rtld_next: tests/integration/rtld_next/main.c tests/integration/rtld_next/probe.c tests/integration/rtld_next/target.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -shared -o $(@D)/libprobe.so tests/integration/rtld_next/probe.c -ldl
	$(CC) $(CFLAGS) -shared -o $(@D)/libtarget.so tests/integration/rtld_next/target.c
	$(CC) $(CFLAGS) -o $@ $< -L$(@D) -Wl,--no-as-needed -lprobe -ltarget -Wl,-rpath,'$$ORIGIN' -ldl

# Benchmarks: make bench (GPU when there is one, else the simulated driver).
$(BUILD)/tests/ipc_bench: tests/bench/ipc_bench.c $(SIM)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< -L$(BUILD)/sim -l:libcuda.so.1 -ldl

$(BUILD)/tests/table_memory: tests/bench/table_memory.c $(SHIM_SRC) | deps
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -o $@ $< $(SHIM_SRC)

.PHONY: bench
bench: $(LIB) $(SIM) $(BUILD)/tests/ipc_bench $(BUILD)/tests/table_memory
	@sh scripts/bench.sh $(BUILD) $(BENCH_ARGS)
