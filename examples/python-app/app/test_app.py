from __future__ import annotations

import unittest

import app.__main__ as main


class HelloTest(unittest.TestCase):
    def test_handler_exists(self) -> None:
        self.assertTrue(hasattr(main, "Hello"))
