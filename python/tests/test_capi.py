"""The ctypes layer: struct layouts against the C header, the library search order and its
errors, the version check, and calls into a real libmobagen without a GPU."""
import ctypes
import os
import subprocess
import tempfile
import unittest

import support
from mobagen import _capi, _capi_decode
from mobagen.errors import LibraryNotFoundError, MobagenError
from mobagen.spec import SpecParams

HEADER = os.environ.get("MOBAGEN_TEST_HEADER") or os.path.join(support.REPO, "runtime", "mobagen.h")

STRUCTS = {"mobagen_fwd_args": _capi.FwdArgs, "mobagen_spec_params": _capi.SpecParams,
           "mobagen_ctx_options": _capi.CtxOptions,
           "mobagen_tuning_restriction": _capi.TuningRestriction,
           "mobagen_kv_cache": _capi_decode.KvCache, "mobagen_append_args": _capi_decode.AppendArgs,
           "mobagen_decode_args": _capi_decode.DecodeArgs, "mobagen_truncate_args": _capi_decode.TruncateArgs}
CONSTANTS = ["MOBAGEN_VERSION_MAJOR", "MOBAGEN_VERSION_MINOR", "MOBAGEN_BF16", "MOBAGEN_FP16"] + \
    list(_capi.STATUS_NAMES)


def _header_text():
    try:
        with open(HEADER) as f:
            return f.read()
    except OSError:
        return ""


def _header_has_api():
    return "mobagen_spec_params" in _header_text()


# The backward's declarations are checked once the header has them (C API with mobagen_bwd);
# before that this package binds them as optional and the check says it was skipped.
HEADER_HAS_BWD = "mobagen_bwd_args" in _header_text()
if HEADER_HAS_BWD:
    STRUCTS["mobagen_bwd_args"] = _capi.BwdArgs


@support.needs_cc
@unittest.skipUnless(_header_has_api(), "runtime/mobagen.h predates C API 0.2 (no mobagen_spec_params)")
class HeaderLayout(unittest.TestCase):
    """Every offset, size and constant that _capi declares, as the C compiler sees the header."""

    @classmethod
    def setUpClass(cls):
        lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "mobagen.h"', 'int main(void) {']
        for cname, struct in STRUCTS.items():
            lines.append('printf("%s sizeof %%zu\\n", sizeof(%s));' % (cname, cname))
            for field, _ in struct._fields_:
                lines.append('printf("%s %s %%zu\\n", offsetof(%s, %s));' % (cname, field, cname, field))
        for name in CONSTANTS:
            lines.append('printf("const %s %%d\\n", (int)%s);' % (name, name))
        lines.append("return 0; }")
        exe = support.compile_c("\n".join(lines), include_dirs=[os.path.dirname(HEADER)])
        out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
        cls.seen = {" ".join(line.split()[:-1]): int(line.split()[-1]) for line in out.splitlines()}

    def test_struct_offsets_and_sizes(self):
        for cname, struct in STRUCTS.items():
            self.assertEqual(ctypes.sizeof(struct), self.seen["%s sizeof" % cname], cname)
            for field, _ in struct._fields_:
                self.assertEqual(getattr(struct, field).offset, self.seen["%s %s" % (cname, field)],
                                 "%s.%s" % (cname, field))

    def test_constants(self):
        self.assertEqual(self.seen["const MOBAGEN_VERSION_MAJOR"], _capi.API_MAJOR)
        self.assertEqual(self.seen["const MOBAGEN_VERSION_MINOR"], _capi.API_MINOR)
        self.assertEqual(self.seen["const MOBAGEN_BF16"], _capi.DTYPE_BF16)
        self.assertEqual(self.seen["const MOBAGEN_FP16"], _capi.DTYPE_FP16)
        for code, name in enumerate(_capi.STATUS_NAMES):
            self.assertEqual(self.seen["const " + name], code, name)
        self.assertEqual(_capi.STATUS_NAMES[_capi.E_NO_DEVICE], "MOBAGEN_E_NO_DEVICE")
        self.assertEqual(_capi.STATUS_NAMES[_capi.E_NO_DRIVER], "MOBAGEN_E_NO_DRIVER")
        self.assertEqual(_capi.STATUS_NAMES[_capi.E_SPEC], "MOBAGEN_E_SPEC")
        self.assertEqual(_capi.STATUS_NAMES[_capi.E_ARG], "MOBAGEN_E_ARG")

    def test_every_declared_function_is_in_the_header(self):
        with open(HEADER) as f:
            text = f.read()
        for name in list(_capi._PROTOTYPES) + list(_capi_decode._PROTOTYPES) + list(_capi_decode._OPTIONAL_PROTOTYPES):
            self.assertIn(name + "(", text.replace(" (", "("), name)

    @unittest.skipUnless(HEADER_HAS_BWD, "runtime/mobagen.h has no mobagen_bwd_args yet (backward C API)")
    def test_backward_declarations(self):
        text = _header_text().replace(" (", "(")
        for name in _capi._OPTIONAL_PROTOTYPES:
            self.assertIn(name + "(", text, name)
        self.assertEqual(ctypes.sizeof(_capi.BwdArgs), self.seen["mobagen_bwd_args sizeof"])
        self.assertEqual(_capi.BwdArgs.fwd.offset, 0)
        self.assertEqual(_capi.BwdArgs.fwd.size, ctypes.sizeof(_capi.FwdArgs))


class SearchOrder(unittest.TestCase):
    def test_explicit_path_is_the_only_candidate(self):
        found = _capi.candidate_paths({"MOBAGEN_LIBRARY": "/opt/x/libmobagen.so"}, "/p/python/mobagen")
        self.assertEqual(found, [("MOBAGEN_LIBRARY", "/opt/x/libmobagen.so")])

    def test_package_then_source_tree_then_system(self):
        package = os.path.join(support.REPO, "python", "mobagen")
        found = [(how, path.replace(support.REPO, "/p")) for how, path in _capi.candidate_paths({}, package)]
        hows = [how for how, _ in found]
        self.assertEqual(found[0], ("next to the package", "/p/python/mobagen/libmobagen.so.0"))
        self.assertEqual(found[2], ("source tree build", "/p/build/libmobagen.so.0"))
        self.assertEqual(found[4], ("system loader", "libmobagen.so.0"))
        self.assertEqual(hows[:6], ["next to the package"] * 2 + ["source tree build"] * 2 + ["system loader"] * 2)

    def test_installed_copy_skips_the_source_tree(self):
        found = _capi.candidate_paths({}, "/nonexistent/site-packages/mobagen")
        self.assertNotIn("source tree build", [how for how, _ in found])
        self.assertEqual(found[0][0], "next to the package")

    def test_missing_library_names_what_was_tried(self):
        with self.assertRaises(LibraryNotFoundError) as cm:
            _capi._open([("next to the package", "/nonexistent/mobagen/libmobagen.so.0"),
                         ("system loader", "libmobagen-does-not-exist.so.0")])
        text = str(cm.exception)
        self.assertIn("/nonexistent/mobagen/libmobagen.so.0 (next to the package): no such file", text)
        self.assertIn("libmobagen-does-not-exist.so.0 (system loader)", text)
        self.assertIn("MOBAGEN_LIBRARY", text)

    def test_not_a_library(self):
        with tempfile.NamedTemporaryFile(suffix=".so") as f:
            f.write(b"not an ELF file")
            f.flush()
            with self.assertRaises(LibraryNotFoundError) as cm:
                _capi.load_library(f.name)
            self.assertIn(f.name, str(cm.exception))

    def test_parse_version(self):
        self.assertEqual(_capi.parse_version("0.2.0"), (0, 2, 0))
        for bad in ("0.2", "v0.2.0", "0.2.x", ""):
            with self.assertRaises(ValueError):
                _capi.parse_version(bad)


def _fake_library(version, skip=(), backward=True):
    """A shared library that exports _capi's functions with a given mobagen_version()."""
    lines = ['const char *mobagen_version(void) { return "%s"; }' % version]
    names = list(_capi._PROTOTYPES) + (list(_capi._OPTIONAL_PROTOTYPES) if backward else [])
    for name in names:
        if name != "mobagen_version" and name not in skip:
            lines.append("void %s(void) {}" % name)
    return support.compile_c("\n".join(lines), shared=True)


@support.needs_cc
class VersionCheck(unittest.TestCase):
    def test_other_major_is_refused(self):
        path = _fake_library("%d.0.0" % (_capi.API_MAJOR + 1))
        with self.assertRaises(LibraryNotFoundError) as cm:
            _capi.load_library(path)
        self.assertIn("is version %d.0.0" % (_capi.API_MAJOR + 1), str(cm.exception))

    def test_older_minor_is_refused(self):
        path = _fake_library("%d.%d.9" % (_capi.API_MAJOR, _capi.API_MINOR - 1))
        with self.assertRaises(LibraryNotFoundError):
            _capi.load_library(path)

    def test_garbled_version_is_refused(self):
        with self.assertRaises(LibraryNotFoundError) as cm:
            _capi.load_library(_fake_library("banana"))
        self.assertIn("'banana'", str(cm.exception))

    def test_missing_function_is_named(self):
        path = _fake_library("%d.%d.0" % (_capi.API_MAJOR, _capi.API_MINOR), skip=("mobagen_fwd_selection",))
        with self.assertRaises(LibraryNotFoundError) as cm:
            _capi.load_library(path)
        self.assertIn("lacks mobagen_fwd_selection", str(cm.exception))

    def test_forward_only_library_loads_and_refuses_the_backward(self):
        version = "%d.%d.0" % (_capi.API_MAJOR, _capi.API_MINOR)
        lib = _capi.load_library(_fake_library(version, backward=False))
        self.assertFalse(lib.has_backward)
        self.assertIsNone(lib.bwd)
        with self.assertRaises(NotImplementedError) as cm:
            lib.require_backward()
        self.assertIn("has no MoBA backward (mobagen_bwd", str(cm.exception))
        self.assertIn(lib.path, str(cm.exception))
        full = _capi.load_library(_fake_library(version))
        self.assertTrue(full.has_backward)
        full.require_backward()
        self.assertEqual(full.bwd.argtypes[1], ctypes.POINTER(_capi.BwdArgs))

    def test_matching_version_loads(self):
        lib = _capi.load_library(_fake_library("%d.%d.7" % (_capi.API_MAJOR, _capi.API_MINOR + 3)))
        self.assertEqual(lib.version_text, "%d.%d.7" % (_capi.API_MAJOR, _capi.API_MINOR + 3))


@support.needs_library
class RealLibraryWithoutDriver(unittest.TestCase):
    """libmobagen itself, made to find no CUDA driver: spec params cross the ctypes boundary and
    are judged by the library's own spec rules, and every failure carries its message."""

    def setUp(self):
        self.lib = support.real_library()
        self.saved = os.environ.get("MOBAGEN_LIBCUDA")
        os.environ["MOBAGEN_LIBCUDA"] = "/nonexistent/mobagen-pytest/libcuda.so.1"
        self.ctx = ctypes.c_void_p()
        self.status = self.lib.ctx_create(0, None, ctypes.byref(self.ctx))

    def tearDown(self):
        self.lib.ctx_destroy(self.ctx)
        if self.saved is None:
            del os.environ["MOBAGEN_LIBCUDA"]
        else:
            os.environ["MOBAGEN_LIBCUDA"] = self.saved

    def test_version_and_status_names(self):
        self.assertEqual(_capi.parse_version(self.lib.version_text)[0], _capi.API_MAJOR)
        for code, name in enumerate(_capi.STATUS_NAMES):
            self.assertEqual(self.lib.status_text(code), name)

    def test_no_driver_is_reported(self):
        self.assertEqual(self.status, _capi.E_NO_DRIVER)
        self.assertIn(b"/nonexistent/mobagen-pytest/libcuda.so.1", self.lib.ctx_errmsg(self.ctx))
        with self.assertRaises(MobagenError) as cm:
            self.lib.check(self.status, lambda: self.lib.ctx_errmsg(self.ctx), "mobagen_ctx_create")
        self.assertEqual(cm.exception.status_name, "MOBAGEN_E_NO_DRIVER")
        self.assertIn("libcuda.so.1", str(cm.exception))

    def test_argument_errors_are_value_errors(self):
        with self.assertRaises(ValueError) as cm:
            self.lib.check(_capi.E_ARG, lambda: b"q is a null device pointer", "mobagen_fwd")
        self.assertIsInstance(cm.exception, MobagenError)
        self.assertEqual(str(cm.exception), "mobagen_fwd failed: q is a null device pointer (MOBAGEN_E_ARG)")
        with self.assertRaises(MobagenError) as cm:
            self.lib.check(_capi.E_SPEC, lambda: b"bad", "x")
        self.assertNotIsInstance(cm.exception, ValueError)

    def _create(self, params):
        op = ctypes.c_void_p(1)
        status = self.lib.op_create_from_params(self.ctx, ctypes.byref(params), ctypes.byref(op))
        self.assertFalse(op.value)
        return status, self.lib.ctx_errmsg(self.ctx).decode()

    def test_valid_params_reach_the_device_check(self):
        # Every field away from its default: a misplaced field would break the spec rules.
        spec = SpecParams(head_dim=96, block_size=48, top_k=5, causal=False, conv_width=4,
                          dtype="float16", gqa_group=3)
        status, message = self._create(spec.to_c())
        self.assertEqual(status, _capi.E_NO_DEVICE, message)

    def test_invalid_params_are_judged_by_the_spec_rules(self):
        params = SpecParams(64, 64, 4).to_c()
        params.head_dim = 48
        status, message = self._create(params)
        self.assertEqual(status, _capi.E_SPEC)
        self.assertIn("head_dim", message)
        params = SpecParams(64, 64, 4).to_c()
        params.gqa_group = 65
        status, message = self._create(params)
        self.assertEqual(status, _capi.E_SPEC)
        self.assertIn("gqa_group", message)
        params = SpecParams(64, 64, 4).to_c()
        params.dtype = 7
        status, message = self._create(params)
        self.assertEqual(status, _capi.E_SPEC)
        self.assertIn("dtype", message)

    def test_spec_name_is_accepted(self):
        # The longest name SpecParams makes still fits the library's 63 characters.
        spec = SpecParams(256, 512, 64, False, 8, "float16", 64)
        self.assertLessEqual(len(spec.name), 63)
        status, message = self._create(spec.to_c())
        self.assertEqual(status, _capi.E_NO_DEVICE, message)


if __name__ == "__main__":
    unittest.main()
