"""
Tests for L{amalgam8.durations.parse_duration}: plain seconds or Go-style units.
"""

from twisted.trial.unittest import SynchronousTestCase

from amalgam8.durations import parse_duration


class ParseDurationTests(SynchronousTestCase):
    """L{parse_duration} good and bad values."""

    def assertParses(self, text, seconds):
        result = parse_duration(text)
        self.assertIsInstance(result, float)
        self.assertAlmostEqual(result, seconds, places=12)

    def test_plain_seconds(self):
        """Plain numbers are seconds."""
        self.assertParses("30", 30)
        self.assertParses("0", 0)
        self.assertParses("0.5", 0.5)
        self.assertParses(".5", 0.5)
        self.assertParses("5.", 5)

    def test_units(self):
        """Each Go unit: ns, us, \u00b5s, ms, s, m, h."""
        self.assertParses("10ns", 10e-9)
        self.assertParses("2us", 2e-6)
        self.assertParses("3\u00b5s", 3e-6)
        self.assertParses("500ms", 0.5)
        self.assertParses("30s", 30)
        self.assertParses("2m", 120)
        self.assertParses("1h", 3600)

    def test_compound(self):
        """Units combine (1m30s, 1h1m1s, 1s500ms, as Gremlin's delaytime)."""
        self.assertParses("1m30s", 90)
        self.assertParses("1h1m1s", 3661)
        self.assertParses("1s500ms", 1.5)

    def test_fractional_units(self):
        """A unit may have a fraction (1.5h, 0.25s)."""
        self.assertParses("1.5h", 5400)
        self.assertParses("0.25s", 0.25)

    def test_whitespace(self):
        """Surrounding whitespace is ignored."""
        self.assertParses(" 30s ", 30)
        self.assertParses("\t15\n", 15)

    def test_numbers(self):
        """A non-negative int or float is taken as seconds."""
        self.assertParses(30, 30)
        self.assertParses(0.25, 0.25)
        self.assertParses(0, 0)

    def test_bad_text(self):
        """Anything else is a ValueError."""
        for text in ("", " ", "abc", "s", "ms", "30x", "30S", "1 s", "1s 2s", "1s2",
                     "-1", "-1s", "+1s", "1m-30s", "1e3", "inf", "nan", "1..5s",
                     "1,5s", "0x10", "30sec", "1d"):
            self.assertRaises(ValueError, parse_duration, text)

    def test_not_finite(self):
        """A value too large for a float is a ValueError, not infinity."""
        self.assertRaises(ValueError, parse_duration, "9" * 400)
        self.assertRaises(ValueError, parse_duration, "9" * 400 + "h")
        self.assertRaises(ValueError, parse_duration, float("inf"))
        self.assertRaises(ValueError, parse_duration, float("nan"))

    def test_negative_number(self):
        """A negative number is a ValueError."""
        self.assertRaises(ValueError, parse_duration, -1)
        self.assertRaises(ValueError, parse_duration, -0.5)

    def test_other_types(self):
        """Booleans, None, lists and bytes are ValueErrors (True is not 1 second)."""
        for value in (True, False, None, [], ["30s"], {}, b"30s"):
            self.assertRaises(ValueError, parse_duration, value)

    def test_message_names_value(self):
        """The error names the value."""
        error = self.assertRaises(ValueError, parse_duration, "soon")
        self.assertIn("soon", str(error))
