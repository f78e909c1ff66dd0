"""`pip install ./python` gives a package that imports, finds its bundled library first and no
source tree (pip with setuptools, no network: --no-build-isolation)."""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import support

PACKAGE_SOURCE = os.path.dirname(support.HERE)


def _can_build_offline():
    """pip, and setuptools with a wheel builder (its own from 70.1, else `wheel`). Asked in a
    child process: importing setuptools here would patch this process's distutils."""
    probe = ("import importlib.util, setuptools\n"
             "assert importlib.util.find_spec('pip')\n"
             "try:\n    import wheel\n"
             "except ImportError:\n    import setuptools.command.bdist_wheel\n")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


CAN_BUILD = _can_build_offline()


@unittest.skipUnless(CAN_BUILD, "pip, setuptools or wheel not installed (offline build)")
class PipInstall(unittest.TestCase):
    def test_install_and_import(self):
        work = tempfile.mkdtemp(prefix="mobagen-pip-")
        try:
            # A copy, so that the build leaves nothing in the source tree.
            src = os.path.join(work, "src")
            shutil.copytree(PACKAGE_SOURCE, src, ignore=shutil.ignore_patterns(
                "__pycache__", "build", "*.egg-info", "tests", "libmobagen.so*"))
            with open(os.path.join(src, "mobagen", "libmobagen.so.0"), "w") as f:
                f.write("bundled library stand-in\n")
            target = os.path.join(work, "site")
            proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation",
                                   "--no-deps", "--no-index", "--target", target, src],
                                  capture_output=True, text=True)
            self.assertEqual(proc.returncode, 0, proc.stdout + proc.stderr)
            for path in ("mobagen/__init__.py", "mobagen/_capi.py", "mobagen/reference.py",
                         "mobagen/torch/__init__.py", "mobagen/torch/_ops.py", "mobagen/libmobagen.so.0"):
                self.assertTrue(os.path.exists(os.path.join(target, path)), path)
            probe = ("import mobagen, mobagen._capi as c; print(mobagen.__version__); "
                     "print([how for how, _ in c.candidate_paths({})][:3])")
            env = dict(os.environ, PYTHONPATH=target)
            env.pop("MOBAGEN_LIBRARY", None)
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                 env=env, cwd=work)
            self.assertEqual(out.returncode, 0, out.stderr)
            version, hows = out.stdout.splitlines()
            self.assertEqual(version, "0.3.2")
            self.assertEqual(hows, "['next to the package', 'next to the package', 'system loader']")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
