# Driver package for test_multiprocessing_fork, recreated for Pythons whose install lacks it
# (3.11.7 and 3.12.1 here); same as 3.13's Lib/test/test_multiprocessing_fork/__init__.py, less
# its TSAN check (check_sanitizer(thread=...) is 3.13-only).
import os.path
import sys
import unittest
from test import support

if support.PGO:
    raise unittest.SkipTest("test is not helpful for PGO")

if sys.platform == "win32":
    raise unittest.SkipTest("fork is not available on Windows")

if sys.platform == 'darwin':
    raise unittest.SkipTest("test may crash on macOS (bpo-33725)")

def load_tests(*args):
    return support.load_package_tests(os.path.dirname(__file__), *args)
