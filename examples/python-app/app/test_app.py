from __future__ import annotations

import unittest

import app.__main__ as main


class HelloTest(unittest.TestCase):
    def test_greeting_uses_the_dependency(self) -> None:
        self.assertEqual(main.greeting(), b"hello from imagedsl (4.2 MB)\n")
