"""What the tests need to know about this machine, and the skips that follow from it."""
import functools
import os
import shutil
import subprocess
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.environ.get("MOBAGEN_TEST_ROOT") or os.path.dirname(os.path.dirname(HERE))
# tools/device.sh sets it: there a missing torch, GPU or library is a failure, not a skip.
REQUIRE_GPU = os.environ.get("MOBAGEN_TEST_REQUIRE_GPU") == "1"

try:
    import torch
except ImportError:
    torch = None


def needs_torch(thing):
    return thing if torch is not None else unittest.skip("torch not installed")(thing)


@functools.lru_cache(maxsize=None)
def _find_library():
    import mobagen
    try:
        return mobagen.library(), None
    except mobagen.LibraryNotFoundError as e:
        return None, str(e).splitlines()[0]


def real_library():
    """The libmobagen the package finds, or None."""
    return _find_library()[0]


def library_skip_reason():
    return "no usable libmobagen.so (%s)" % _find_library()[1]


def needs_library(thing):
    if real_library() is not None:
        return thing
    return unittest.skip(library_skip_reason())(thing)


def gpu_skip_reason():
    if torch is None:
        return "torch not installed"
    if not torch.cuda.is_available():
        return "no CUDA device"
    if real_library() is None:
        return library_skip_reason()
    return None


def needs_gpu(cls):
    """For GPU test classes: skipped (or failed under MOBAGEN_TEST_REQUIRE_GPU=1) without torch,
    a CUDA device or the library."""
    reason = gpu_skip_reason()
    if reason is None:
        return cls
    if REQUIRE_GPU:
        def setUpClass(klass):
            raise AssertionError("MOBAGEN_TEST_REQUIRE_GPU=1 but " + reason)
        cls.setUpClass = classmethod(setUpClass)
        return cls
    return unittest.skip(reason)(cls)


def compiler():
    return os.environ.get("CC") if os.environ.get("CC") and shutil.which(os.environ["CC"]) else shutil.which("cc")


def needs_cc(thing):
    return thing if compiler() else unittest.skip("no C compiler (cc)")(thing)


def compile_c(source, shared=False, include_dirs=(), libs=()):
    """Builds C source into a temporary directory; returns the output path."""
    out_dir = tempfile.mkdtemp(prefix="mobagen-pytest-")
    src = os.path.join(out_dir, "probe.c")
    with open(src, "w") as f:
        f.write(source)
    out = os.path.join(out_dir, "probe.so" if shared else "probe")
    cmd = [compiler(), "-std=c11", "-O1", "-o", out, src]
    if shared:
        cmd[1:1] = ["-shared", "-fPIC"]
    for d in include_dirs:
        cmd.append("-I" + d)
    cmd.extend(libs)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise AssertionError("%s failed:\n%s" % (" ".join(cmd), proc.stderr))
    return out
