# moelab — one Makefile (in the spirit of Lua's).
#   make demo    install missing Debian packages, build, run the default experiment
#   make test    install (SLURM too, for check_slurm), build, run every test suite
#   make bench   time the SRNN step beside PyTorch
#   make asan    build and test with AddressSanitizer + UBSan into build-asan/
#   make fuzz    libFuzzer targets (clang) into build-fuzz/, FUZZ_SECONDS per target
#   make valgrind  a build without AVX-512 into build-valgrind/, a subset under valgrind

BUILD   ?= build
CC      ?= cc
OPT     ?= -O2 -march=native
PKGS     = lua5.4 yaml-0.1 zlib
# OpenBLAS built for OpenMP (Debian's libopenblas-openmp-dev): BLAS calls and moelab's own
# OpenMP loops share one thread pool instead of two pools spinning against each other.
MULTIARCH := $(shell $(CC) -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
BLAS_DIR ?= /usr/lib/$(MULTIARCH)/openblas-openmp
BLAS_INC ?= /usr/include/$(MULTIARCH)/openblas-openmp
PKG_CFLAGS := -I$(BLAS_INC) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := -L$(BLAS_DIR) -Wl,-rpath,$(BLAS_DIR) -lopenblas $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_LIBS := $(shell pkg-config --libs check 2>/dev/null)
# MPI (OpenMPI's mpicc names its flags; run/dist.c is the only user): found, the build
# defines ML_MPI and `mpirun -np R moelab run` trains on R ranks; MPI=0, or no mpicc, builds
# without (one rank). Debian: libopenmpi-dev, openmpi-bin (tools/install-deps.sh).
MPI     ?= $(if $(shell command -v mpicc 2>/dev/null),1,0)
ifeq ($(MPI),1)
MPI_CFLAGS := -DML_MPI $(shell mpicc --showme:compile 2>/dev/null)
MPI_LIBS   := $(shell mpicc --showme:link 2>/dev/null)
endif
WARN     = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CFLAGS  ?= $(OPT) -g
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) -fopenmp -fno-math-errno -Icore -Icore/include $(PKG_CFLAGS) $(MPI_CFLAGS) $(CFLAGS) $(EXTRA_CFLAGS)
LIBS     = $(PKG_LIBS) $(MPI_LIBS) -ldl -lm -lpthread -fopenmp
PLUGIN_OPT ?= -O2 -march=native
PLUGIN_CFLAGS = -std=c11 $(WARN) $(PLUGIN_OPT) -g -fPIC -shared -fvisibility=hidden -Icore/include $(EXTRA_CFLAGS)

CORE_SRC   := $(wildcard core/*/*.c)
CORE_OBJ   := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
PLUGIN_SRC := $(wildcard plugins/*/*.c)
PLUGINS    := $(patsubst %.c,$(BUILD)/plugins/%.so,$(notdir $(PLUGIN_SRC)))
TPLUG_SRC  := $(wildcard tests/plugins/*.c)
# builds of tests/plugins/good_router.c with other -D flags (see its header)
TPLUG_VARIANTS := broken_grad states20_router states33_router
TPLUGINS   := $(patsubst tests/plugins/%.c,$(BUILD)/tests/plugins/%.so,$(TPLUG_SRC)) \
              $(TPLUG_VARIANTS:%=$(BUILD)/tests/plugins/%.so)
# the frozen ABI 1.0 plugins (tests/abi/1.0): built against the frozen header, and against
# today's for comparison (tests/check_abi.c)
ABI10_SRC  := $(wildcard tests/abi/1.0/*.c)
ABI10_SO   := $(patsubst tests/abi/1.0/%.c,$(BUILD)/tests/abi/1.0/%.so,$(ABI10_SRC)) \
              $(patsubst tests/abi/1.0/%.c,$(BUILD)/tests/abi/now/%.so,$(ABI10_SRC))
# the frozen ABI 1.1 fixtures (tests/abi/1.1): built against the frozen 1.1 header
ABI11_SRC  := $(wildcard tests/abi/1.1/*.c)
ABI11_SO   := $(patsubst tests/abi/1.1/%.c,$(BUILD)/tests/abi/1.1/%.so,$(ABI11_SRC))
TEST_SRC   := $(wildcard tests/check_*.c)
TESTS      := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))

.PHONY: all deps deps-test demo test check-build check-layers bench asan fuzz fuzz-build valgrind clean
all: $(BUILD)/moelab $(PLUGINS)

deps:
	@sh tools/install-deps.sh

# the tests also need SLURM (tests/check_slurm.c starts a single-node cluster of its own)
# and OpenMPI (tests/check_mpi.c starts mpirun)
deps-test:
	@MOELAB_SLURM=1 MOELAB_MPI=1 sh tools/install-deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

# Provenance: the commit and flags of this build (core/base/version.h), regenerated at
# every make, replaced only when its text changes.
GEN_VERSION = $(BUILD)/gen/version.c
.PHONY: FORCE
$(GEN_VERSION): FORCE
	@mkdir -p $(dir $@)
	@sh tools/gen-version.sh "$(CC) $(CFLAGS) $(EXTRA_CFLAGS)" > $@.tmp && \
	    if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi
# Whether this build has MPI (ML_MPI, run/dist.c alone reads it): a stamp named after it, so
# that OpenMPI installed (or MPI=0 given) after a build recompiles dist.c and relinks, where a
# plain `make` would keep the old one-rank binary.
MPI_STAMP := $(BUILD)/gen/mpi-$(MPI)
$(MPI_STAMP):
	@mkdir -p $(dir $@)
	@rm -f $(BUILD)/gen/mpi-* && touch $@
$(BUILD)/obj/core/run/dist.o: $(MPI_STAMP)

$(BUILD)/obj/gen/version.o: $(GEN_VERSION) core/base/version.h
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/libmoelab.a: $(CORE_OBJ) $(BUILD)/obj/gen/version.o
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/moelab: $(BUILD)/obj/core/main.o $(BUILD)/libmoelab.a
	$(CC) $(ALL_CFLAGS) $^ -o $@ $(LIBS)

# The bundled plugins are built with OpenMP: moelab/plugin_aux.h shares the row loops of large
# calls among the host's threads (its "Threads"; the results are the same bits as without).
# The test plugins are built without, as a plugin from outside the tree may be.
vpath %.c plugins/routers plugins/losses plugins/schedules
$(BUILD)/plugins/%.so: %.c core/include/moelab/plugin.h core/include/moelab/plugin_aux.h
	@mkdir -p $(dir $@)
	$(CC) $(PLUGIN_CFLAGS) -fopenmp $< -o $@ -lm

$(BUILD)/tests/plugins/%.so: tests/plugins/%.c core/include/moelab/plugin.h
	@mkdir -p $(dir $@)
	$(CC) $(PLUGIN_CFLAGS) -Wno-missing-field-initializers $< -o $@ -lm

VARIANT_broken_grad = -DROUTER_BROKEN=1 -DROUTER_NAME='"broken_grad"' -DROUTER_DOC='"a router whose backward misses the softmax Jacobian"'
VARIANT_states20_router = -DROUTER_STATES=20 -DROUTER_NAME='"states20_router"' -DROUTER_DOC='"20 state tensors"'
VARIANT_states33_router = -DROUTER_STATES=33 -DROUTER_NAME='"states33_router"' -DROUTER_DOC='"33 state tensors, more than a host keeps"'
$(TPLUG_VARIANTS:%=$(BUILD)/tests/plugins/%.so): $(BUILD)/tests/plugins/%.so: tests/plugins/good_router.c core/include/moelab/plugin.h
	@mkdir -p $(dir $@)
	$(CC) $(PLUGIN_CFLAGS) $(VARIANT_$*) $< -o $@ -lm

# the frozen 1.0 plugins: -I the frozen header (never core/include), and once against today's
$(BUILD)/tests/abi/1.0/%.so: tests/abi/1.0/%.c tests/abi/1.0/moelab/plugin.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) $(PLUGIN_OPT) -g -fPIC -shared -fvisibility=hidden -Itests/abi/1.0 $(EXTRA_CFLAGS) $< -o $@ -lm
$(BUILD)/tests/abi/1.1/%.so: tests/abi/1.1/%.c tests/abi/1.1/moelab/plugin.h
	@mkdir -p $(dir $@)
	$(CC) -std=c11 $(WARN) $(PLUGIN_OPT) -g -fPIC -shared -fvisibility=hidden -Itests/abi/1.1 $(EXTRA_CFLAGS) $< -o $@ -lm
$(BUILD)/tests/abi/now/%.so: tests/abi/1.0/%.c core/include/moelab/plugin.h
	@mkdir -p $(dir $@)
	$(CC) $(PLUGIN_CFLAGS) -Wno-missing-field-initializers $< -o $@ -lm

$(BUILD)/tests/%: tests/%.c tests/testutil.h $(BUILD)/libmoelab.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests $< $(BUILD)/libmoelab.a -o $@ $(LIBS) $(CHECK_LIBS)

# demo, test and bench install packages first, then build in a fresh make: the compiler
# flags come from pkg-config, which can only answer once the packages are there.
demo: deps
	@$(MAKE) --no-print-directory all
	$(BUILD)/moelab run configs/demo.yaml

test: deps-test
	@$(MAKE) --no-print-directory all check-build
	@sh tools/check-layers.sh && sh tools/check-layers.sh --self-test
	@sh tools/run-tests.sh $(BUILD) $(TESTS)

check-build: all $(TPLUGINS) $(ABI10_SO) $(ABI11_SO) $(TESTS)

check-layers:
	@sh tools/check-layers.sh && sh tools/check-layers.sh --self-test

# bench also needs PyTorch (the peers) and OpenMPI (bench/mpi.sh starts mpirun), installed
# before the build so that it finds mpicc
bench:
	@MOELAB_BENCH=1 MOELAB_MPI=1 sh tools/install-deps.sh
	@$(MAKE) --no-print-directory all
	@sh bench/run.sh $(BUILD)

# Sanitizers: any report fails the run. The first error halts the process (no recovery),
# leaks are checked at every exit, and the reports of every process — the suites and the
# moelab commands they spawn, which inherit the options through the environment — go to
# build-asan/sanitizer-logs/, which tools/run-tests.sh checks after each suite and prints.
SAN_LOGS     = $(CURDIR)/build-asan/sanitizer-logs
ASAN_ENV     = ASAN_OPTIONS=halt_on_error=1:abort_on_error=1:detect_leaks=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1:log_path=$(SAN_LOGS)/asan \
               UBSAN_OPTIONS=halt_on_error=1:abort_on_error=1:print_stacktrace=1:log_path=$(SAN_LOGS)/ubsan \
               LSAN_OPTIONS=suppressions=$(CURDIR)/tools/lsan.supp:print_suppressions=0 \
               MOELAB_SANITIZER_LOGS=$(SAN_LOGS)
asan:
	@rm -rf $(SAN_LOGS) && mkdir -p $(SAN_LOGS)
	$(ASAN_ENV) $(MAKE) BUILD=build-asan OPT="-O1 -march=native" \
	    EXTRA_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" test

# libFuzzer: the core built by clang with coverage hooks and ASan/UBSan, one binary per
# harness in tests/fuzz/targets.h; tools/fuzz.sh runs each for FUZZ_SECONDS on
# tests/fuzz/corpus/<target>/ and copies findings to tests/fuzz/crashes/<target>/.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= config safetensors idx cifar
FUZZ_CC      ?= clang
FUZZ_SAN      = -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
FUZZ_BINS     = $(FUZZ_TARGETS:%=$(BUILD)/fuzz/fuzz_%)

fuzz:
	@MOELAB_FUZZ=1 sh tools/install-deps.sh
	@$(MAKE) --no-print-directory BUILD=build-fuzz CC=$(FUZZ_CC) OPT="-O1" \
	    EXTRA_CFLAGS="-fsanitize=fuzzer-no-link $(FUZZ_SAN) -Wno-unknown-pragmas -Wno-pass-failed" fuzz-build
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	    sh tools/fuzz.sh build-fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-build: $(FUZZ_BINS)

$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/targets.h $(BUILD)/libmoelab.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fsanitize=fuzzer -Itests/fuzz $< $(BUILD)/libmoelab.a -o $@ $(LIBS)

$(BUILD)/tests/check_fuzz: tests/fuzz/targets.h
$(BUILD)/tests/check_aux: core/include/moelab/plugin_aux.h core/include/moelab/plugin.h

# valgrind 3.19 cannot decode AVX-512: core and plugins for x86-64-v3 (AVX2, FMA), and
# OpenBLAS held to its Haswell kernel (tools/valgrind.sh sets the environment).
VALGRIND_OPT ?= -O1 -march=x86-64-v3
valgrind:
	@MOELAB_VALGRIND=1 sh tools/install-deps.sh
	@$(MAKE) --no-print-directory BUILD=build-valgrind OPT="$(VALGRIND_OPT)" PLUGIN_OPT="$(VALGRIND_OPT)" check-build
	sh tools/valgrind.sh build-valgrind $(VALGRIND_SUITES)

clean:
	rm -rf $(BUILD) build-asan build-fuzz build-valgrind

-include $(CORE_OBJ:.o=.d) $(BUILD)/obj/core/main.d
