"""
Tests for L{amalgam8.registry.model}: the time format and the cached encodings.
"""

import json
from datetime import datetime, timezone

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.registry.model import Instance, rfc3339
from amalgam8.testing.registry import registration


class RFC3339Tests(SynchronousTestCase):
    """rfc3339 formats like datetime does, only faster."""

    @settings(max_examples=2000, database=None)
    @given(st.floats(min_value=0, max_value=4e9, allow_nan=False))
    def test_matches_datetime(self, timestamp):
        """The text parses back to the same instant, within a microsecond."""
        text = rfc3339(timestamp)
        parsed = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        self.assertLessEqual(abs(parsed.timestamp() - timestamp), 2e-6)

    def test_carry(self):
        """Microseconds that round up to a whole second carry into the seconds."""
        self.assertEqual(rfc3339(1.9999996), "1970-01-01T00:00:02.000000Z")


class EncodingTests(SynchronousTestCase):
    """An instance's cached encoding is the JSON of its fields."""

    def test_encode_equals_as_dict(self):
        """encode() gives the same object as as_dict(), empty fields omitted."""
        for reg in (registration(), registration(tags=("v1", "x"), metadata='{"a":[1]}'),
                    registration(status="OUT_OF_SERVICE")):
            instance = Instance(reg, 1700000000.25)
            self.assertEqual(json.loads(instance.encode()), instance.as_dict())
        self.assertNotIn("tags", Instance(registration(), 0).as_dict())
