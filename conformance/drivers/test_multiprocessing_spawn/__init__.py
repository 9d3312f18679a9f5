# Driver package for test_multiprocessing_spawn, recreated for Pythons whose install lacks it
# (3.11.7 and 3.12.1 here); same as 3.13's Lib/test/test_multiprocessing_spawn/__init__.py.
import os.path
import unittest
from test import support

if support.PGO:
    raise unittest.SkipTest("test is not helpful for PGO")

def load_tests(*args):
    return support.load_package_tests(os.path.dirname(__file__), *args)
