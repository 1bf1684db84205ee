"""
Tests for L{amalgam8.gremlin.model}: services as recipes name them, and how they match the
labels of access-log records.
"""

from twisted.trial.unittest import SynchronousTestCase

from amalgam8.gremlin.model import CHECK_ENDPOINTS, CHECKS, Service


class ServiceTests(SynchronousTestCase):
    def test_parse(self):
        self.assertEqual(Service.parse("reviews"), Service("reviews"))
        self.assertEqual(Service.parse(" reviews:v2 "), Service("reviews", ("v2",)))
        self.assertEqual(Service.parse("a:v1,beta"), Service("a", ("v1", "beta")))

    def test_parse_refuses(self):
        for bad in ("", "  ", ":v1", None, 3, ["a"]):
            self.assertRaises(ValueError, Service.parse, bad)

    def test_str_round_trips(self):
        for text in ("reviews", "reviews:v2", "a:v1,beta"):
            self.assertEqual(str(Service.parse(text)), text)

    def test_matches(self):
        """A service matches a label of its name carrying all of its tags, exactly per tag."""
        self.assertTrue(Service.parse("reviews").matches("reviews:v2"))
        self.assertTrue(Service.parse("reviews:v2").matches("reviews:beta,v2"))
        self.assertFalse(Service.parse("reviews:v1").matches("reviews:v10"))
        self.assertFalse(Service.parse("reviews").matches("ratings:v1"))
        self.assertTrue(Service.parse("gateway").matches("gateway:"))
        self.assertFalse(Service.parse("gateway").matches(None))

    def test_from_label(self):
        self.assertEqual(Service.from_label("reviews:v2,x"), Service("reviews", ("v2", "x")))
        self.assertEqual(Service.from_label("gateway:"), Service("gateway"))
        self.assertEqual(Service.from_label(None), Service(""))

    def test_tables_agree(self):
        self.assertEqual(set(CHECKS), set(CHECK_ENDPOINTS))
