"""The top-level package imports without torch, a GPU or the library, and loads none of them."""
import os
import subprocess
import sys
import unittest

import support


class Import(unittest.TestCase):
    def test_import_pulls_in_nothing_heavy(self):
        probe = ("import sys, mobagen\n"
                 "print(mobagen.__version__)\n"
                 "print(sorted(m for m in ('torch', 'numpy', 'mobagen._capi') if m in sys.modules))\n"
                 "p = mobagen.validate_varlen(*[mobagen.TensorInfo(s, st, dt, 'cuda:0', 256) for s, st, dt in (\n"
                 "    ((4, 2, 64), (128, 64, 1), 'float16'), ((4, 1, 64), (64, 64, 1), 'float16'),\n"
                 "    ((4, 1, 64), (64, 64, 1), 'float16'), ((2,), (1,), 'int32'), ((2,), (1,), 'int32'))],\n"
                 "    4, 4, 16, 1)\n"
                 "print(p.spec.name)\n")
        env = dict(os.environ, PYTHONPATH=os.path.dirname(support.HERE))
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.splitlines(), ["0.3.2", "[]", "moba_d64_b16_k1_g2_fp16"])


if __name__ == "__main__":
    unittest.main()
