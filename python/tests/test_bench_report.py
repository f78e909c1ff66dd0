"""bench/report_train.py (no torch needed): ratios against the same length's SDPA rows, the
memory check against SDPA flash plus the selection, statuses, and the targets table."""
import importlib.util
import os
import tempfile
import unittest

import support

CSV = """L,block_size,top_k,system,status,median_ms,min_ms,reps,peak_bytes,fwd_ms,selection_bytes
32768,,,flash,ok,90.0,89.0,20,1073741824,nan,0
32768,,,cudnn,ok,60.0,59.0,30,1073741824,nan,0
32768,128,8,mobagen,ok,15.0,14.8,30,1107296256,8.000,33554432
32768,64,16,mobagen,ok,30.0,29.0,30,1200000000,20.000,67108864
131072,,,flash,ok,1500.0,1490.0,3,4294967296,nan,0
131072,,,cudnn,oom,nan,nan,0,0,nan,0
131072,128,8,mobagen,ok,100.0,99.0,10,4429185024,50.0,134217728
131072,32,32,mobagen,error,nan,nan,0,0,nan,536870912
"""


def load_report():
    path = os.path.join(support.REPO, "bench", "report_train.py")
    spec = importlib.util.spec_from_file_location("report_train", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ReportTrain(unittest.TestCase):
    def setUp(self):
        self.report = load_report()
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
            f.write(CSV)
        self.addCleanup(os.unlink, f.name)
        self.text = self.report.tables(*self.report.load(f.name))
        self.rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[1:-1]]
                     for line in self.text.splitlines() if line.startswith("| B")}

    def test_ratios_and_memory(self):
        row = self.rows[("B128 k8", "32K")]
        self.assertEqual(row[2:8], ["15.000", "8.000", "90.000", "60.000", "6.00", "4.00"])
        self.assertEqual(row[-1], "yes")            # 1.03 GiB <= 1 GiB + 32 MiB
        self.assertEqual(self.rows[("B64 k16", "32K")][-1], "no")   # 1.2e9 > 1 GiB + 64 MiB
        row = self.rows[("B128 k8", "128K")]
        self.assertEqual((row[5], row[6], row[7]), ("oom", "15.00", "-"))
        self.assertEqual(self.rows[("B32 k32", "128K")][2], "error")

    def test_targets(self):
        lines = {line.split("|")[1].strip(): line.split("|")[3].strip()
                 for line in self.text.splitlines() if "/ mobagen (fwd+bwd)" in line}
        self.assertEqual(lines["128K B128 k8, flash / mobagen (fwd+bwd)"], "15.00")
        self.assertEqual(lines["32K B128 k8, flash / mobagen (fwd+bwd)"], "6.00")
        self.assertEqual(lines["128K B128 k8, cudnn / mobagen (fwd+bwd)"], "-")
        self.assertEqual(lines["128K B64 k16, flash / mobagen (fwd+bwd)"], "not run")


if __name__ == "__main__":
    unittest.main()
