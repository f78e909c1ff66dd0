#!/usr/bin/env python3
"""Runs the mobagen Python tests (unittest, no pytest needed) against the package in this source
tree and prints one closing line: "python tests: N passed, N failed, N skipped".

    python3 python/tests/run.py [-k SUBSTRING] [-v]

Tests that need torch, a CUDA device or a built libmobagen.so skip with the reason
(`skipped: torch not installed`, ...) where those are missing; MOBAGEN_TEST_REQUIRE_GPU=1
(tools/device.sh) turns those skips into failures."""
import argparse
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))   # the package of this tree, not an installed one
sys.path.insert(0, HERE)


class Result(unittest.TestResult):
    def __init__(self, stream, verbose):
        super().__init__()
        self.stream, self.verbose, self.passed = stream, verbose, 0
        self.started = 0.0

    def _line(self, test, text):
        # A class whose setUpClass failed reports as "setUpClass (module.Class)".
        name = test.id().split(".", 1)[-1] if hasattr(test, "_testMethodName") else str(test)
        self.stream.write("%-72s %s\n" % (name, text))
        self.stream.flush()

    def startTest(self, test):
        super().startTest(test)
        self.started = time.time()

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1
        if self.verbose:
            self._line(test, "ok (%.2f s)" % (time.time() - self.started))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._line(test, "skipped: %s" % reason)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._line(test, "FAILED")
        self.stream.write(self._exc_info_to_string(err, test) + "\n")

    def addError(self, test, err):
        super().addError(test, err)
        self._line(test, "ERROR")
        self.stream.write(self._exc_info_to_string(err, test) + "\n")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.passed += 1

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._line(test, "FAILED (unexpected success)")


def _flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="pattern", help="run only tests whose id contains this")
    parser.add_argument("-v", dest="verbose", action="store_true", help="print passing tests too")
    opts = parser.parse_args()
    loader = unittest.TestLoader()
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    # A module that fails to import is always reported, whatever the filter.
    tests = [t for t in _flatten(suite) if not opts.pattern or opts.pattern in t.id()
             or isinstance(t, unittest.loader._FailedTest)]
    result = Result(sys.stdout, opts.verbose)
    unittest.TestSuite(tests).run(result)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    print("python tests: %d passed, %d failed, %d skipped" % (result.passed, failed, len(result.skipped)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
