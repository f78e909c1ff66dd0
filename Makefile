# mobagen build. `make` builds the CLI and libraries, `make test` runs every test (CPU-only
# machines skip the GPU ones), `make run` builds the default spec's kernels. See README.md.

CUDA_HOME ?= $(shell [ -d /usr/local/cuda ] && echo /usr/local/cuda)
PREFIX    ?= /usr/local
BUILD     ?= build
CC        ?= cc
PKGS      := lua5.4 yaml-0.1 libsodium sqlite3
# Lua, libyaml, libsodium and SQLite are linked statically so that the binaries run on machines that
# lack those packages (the GPU machine has none of them); NVRTC and libcuda are dlopen()ed.
STATIC_LIBS = $(shell pkg-config --variable=libdir lua5.4)/liblua5.4.a \
              $(shell pkg-config --variable=libdir yaml-0.1)/libyaml.a \
              $(shell pkg-config --variable=libdir libsodium)/libsodium.a \
              $(shell pkg-config --variable=libdir sqlite3)/libsqlite3.a
DEP_CFLAGS  = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
# The library's version, from the one place that states it (also MOBAGEN_VERSION_* in C).
VERSION   := $(shell sed -n 's/^\#define MOBAGEN_VERSION_STRING "\(.*\)"/\1/p' runtime/mobagen.h)
SOMAJOR   := $(firstword $(subst ., ,$(VERSION)))
WARN      := -Wall -Wextra -Wshadow -Wno-unused-parameter -Werror=implicit-function-declaration
CFLAGS    ?= -O2 -g
# Hidden by default: libmobagen.so exports only what mobagen.h marks MOBAGEN_API.
ALL_CFLAGS = -std=c11 -MMD -MP -D_GNU_SOURCE -fPIC -fvisibility=hidden $(WARN) $(CFLAGS) $(DEP_CFLAGS) \
             -Igenerator -Iruntime -DMG_DEFAULT_CUDA_HOME='"$(CUDA_HOME)"' \
             -DMG_INSTALL_DATADIR='"$(PREFIX)/share/mobagen"'
LDLIBS    = $(STATIC_LIBS) -ldl -lpthread -lm

TPL_FILES := $(sort $(wildcard templates/*.tpl))
EMBED_SRC := $(BUILD)/gen/embedded_templates.c
LIB_SRC   := $(filter-out generator/cli%.c,$(wildcard generator/*.c runtime/*.c)) $(EMBED_SRC)
CLI_SRC   := $(wildcard generator/cli*.c)
REF_SRC   := $(wildcard tests/ref/*.c)
TESTUTIL  := $(wildcard tests/util/*.c)
TEST_SRC  := $(wildcard tests/test_*.c)

LIB_OBJ   := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ   := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)

# Tests build everything again with sanitizers, into their own tree.
SAN       := -fsanitize=address,undefined -fno-omit-frame-pointer
TBUILD    := $(BUILD)/san
T_LIB_OBJ := $(LIB_SRC:%.c=$(TBUILD)/obj/%.o)
T_CLI_OBJ := $(CLI_SRC:%.c=$(TBUILD)/obj/%.o)
T_AUX_OBJ := $(REF_SRC:%.c=$(TBUILD)/obj/%.o) $(TESTUTIL:%.c=$(TBUILD)/obj/%.o)
TEST_BIN  := $(TEST_SRC:tests/%.c=$(TBUILD)/tests/%)

# The GPU machine gets an unsanitized build (its image lacks the sanitizer runtimes, and the
# reference checks of long sequences want -O2), plus libcmocka: tools/device.sh runs it.
GBUILD    := $(BUILD)/gpu
G_LIB_OBJ := $(LIB_SRC:%.c=$(GBUILD)/obj/%.o)
G_AUX_OBJ := $(REF_SRC:%.c=$(GBUILD)/obj/%.o) $(TESTUTIL:%.c=$(GBUILD)/obj/%.o)
GPU_TESTS := $(patsubst tests/%.c,$(GBUILD)/tests/%,$(wildcard tests/test_gpu_*.c))
BENCHES   := $(patsubst bench/%.c,$(GBUILD)/bench/%,$(wildcard bench/*.c))

# libFuzzer targets: every tests/fuzz/fuzz_NAME.c, seeded from tests/fuzz/corpus/NAME/. The
# library is built again with clang, instrumented, and with the sandbox's instruction and time
# budgets lowered so that a looping template costs the fuzzer milliseconds, not seconds.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_TEST_SECONDS ?= 45
FBUILD       := $(BUILD)/fuzz
FUZZ_FLAGS   := -fsanitize=address,undefined -fno-sanitize-recover=undefined \
                -DMG_LUA_INSTRUCTION_CAP=5000000LL -DMG_LUA_TIME_LIMIT_MS=1000
F_LIB_OBJ    := $(LIB_SRC:%.c=$(FBUILD)/obj/%.o)
FUZZ_BIN     := $(patsubst tests/fuzz/%.c,$(FBUILD)/%,$(wildcard tests/fuzz/fuzz_*.c))

.PHONY: all setup run test test-build fuzz fuzz-build gpu-kit install clean
all: $(BUILD)/mobagen $(BUILD)/libmobagen.a $(BUILD)/libmobagen.so

setup:
	@tools/setup.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

$(TBUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN) -Itests -MMD -MP -c $< -o $@

$(EMBED_SRC): $(TPL_FILES) tools/embed_templates.sh
	@mkdir -p $(dir $@)
	tools/embed_templates.sh $@ $(TPL_FILES)

$(BUILD)/libmobagen.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

# Debian's static Lua is not position-independent, so the shared library links the shared ones.
# Versioned: libmobagen.so -> libmobagen.so.MAJOR (the SONAME) -> libmobagen.so.MAJOR.MINOR.PATCH.
$(BUILD)/libmobagen.so.$(VERSION): $(LIB_OBJ) tools/libmobagen.map
	$(CC) -shared -Wl,-soname,libmobagen.so.$(SOMAJOR) -Wl,--version-script=tools/libmobagen.map \
	    -o $@ $(LIB_OBJ) $(shell pkg-config --libs $(PKGS)) -ldl -lpthread -lm

$(BUILD)/libmobagen.so: $(BUILD)/libmobagen.so.$(VERSION)
	ln -sf libmobagen.so.$(VERSION) $(BUILD)/libmobagen.so.$(SOMAJOR)
	ln -sf libmobagen.so.$(SOMAJOR) $@

$(BUILD)/mobagen: $(CLI_OBJ) $(BUILD)/libmobagen.a
	$(CC) -o $@ $(CLI_OBJ) $(BUILD)/libmobagen.a $(LDLIBS)

$(TBUILD)/mobagen: $(T_CLI_OBJ) $(T_LIB_OBJ)
	$(CC) $(SAN) -o $@ $^ $(LDLIBS)

$(TBUILD)/tests/%: tests/%.c $(T_LIB_OBJ) $(T_AUX_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(SAN) -Itests -o $@ $< $(T_LIB_OBJ) $(T_AUX_OBJ) \
	    $(shell pkg-config --libs cmocka) $(LDLIBS)

$(GBUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests -c $< -o $@

G_LINK     = $(CC) $(ALL_CFLAGS) -Itests -o $@ $< $(G_LIB_OBJ) $(G_AUX_OBJ) \
             $(shell pkg-config --libs cmocka) $(LDLIBS)
$(GBUILD)/tests/%: tests/%.c $(G_LIB_OBJ) $(G_AUX_OBJ)
	@mkdir -p $(dir $@)
	$(G_LINK)

$(GBUILD)/bench/%: bench/%.c $(G_LIB_OBJ) $(G_AUX_OBJ)
	@mkdir -p $(dir $@)
	$(G_LINK)

# The C API example, against the build tree and CUDA's runtime library.
$(GBUILD)/example_fwd: docs/example_fwd.c $(BUILD)/libmobagen.a
	$(CC) $(ALL_CFLAGS) -I$(CUDA_HOME)/include -o $@ $< $(BUILD)/libmobagen.a $(LDLIBS) \
	    -L$(CUDA_HOME)/lib64 -lcudart_static -lrt

gpu-kit: $(BUILD)/mobagen $(GPU_TESTS) $(BENCHES) $(GBUILD)/example_fwd $(BUILD)/libmobagen.so
	@mkdir -p $(GBUILD)/lib
	cp -L $(shell $(CC) -print-file-name=libcmocka.so.0) $(GBUILD)/lib/
	@# libmobagen.so (the Python binding loads it) links Lua, libyaml, libsodium and SQLite shared.
	ldd $(BUILD)/libmobagen.so | awk '$$3 ~ /^\// && $$1 ~ /^lib(lua|yaml|sodium|sqlite3)/ {print $$3}' | \
	    xargs -r cp -L -t $(GBUILD)/lib/

test-build: $(TEST_BIN) $(TBUILD)/mobagen $(BUILD)/libmobagen.so

test: setup
	@$(MAKE) --no-print-directory test-build fuzz-build
	@FUZZ_BUILD=$(FBUILD) FUZZ_SECONDS=$(FUZZ_TEST_SECONDS) tools/run_tests.sh $(TBUILD)

$(FBUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(ALL_CFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FBUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(F_LIB_OBJ)
	$(FUZZ_CC) $(ALL_CFLAGS) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ $< $(F_LIB_OBJ) $(LDLIBS)

fuzz-build: $(FUZZ_BIN)

# Each target for FUZZ_SECONDS (default 60); a crash keeps its reproducer in build/fuzz/crashes/.
fuzz: setup
	@$(MAKE) --no-print-directory fuzz-build
	@tools/run_fuzz.sh $(FUZZ_SECONDS) $(FUZZ_BIN)

# The main job on the default spec: compile its variants (and, with a GPU, test and time them).
run: setup
	@$(MAKE) --no-print-directory all
	$(BUILD)/mobagen build specs/default.yaml

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/mobagen \
	    $(DESTDIR)$(PREFIX)/share/mobagen/templates $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 755 $(BUILD)/mobagen $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/libmobagen.a $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(BUILD)/libmobagen.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libmobagen.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/libmobagen.so.$(SOMAJOR)
	ln -sf libmobagen.so.$(SOMAJOR) $(DESTDIR)$(PREFIX)/lib/libmobagen.so
	install -d $(DESTDIR)$(PREFIX)/share/mobagen/specs
	install -m 644 runtime/mobagen.h $(DESTDIR)$(PREFIX)/include/mobagen/
	install -m 644 templates/*.tpl $(DESTDIR)$(PREFIX)/share/mobagen/templates/
	install -m 644 specs/*.yaml $(DESTDIR)$(PREFIX)/share/mobagen/specs/
	install -d $(DESTDIR)$(PREFIX)/share/mobagen/bench
	install -m 644 bench/sdpa_once.py $(DESTDIR)$(PREFIX)/share/mobagen/bench/
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' tools/mobagen.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/mobagen.pc

clean:
	rm -rf $(BUILD) out

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
