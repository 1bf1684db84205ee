"""
Tests for L{amalgam8.auth}: bearer tokens to namespaces in the modes of SPEC A1.
"""

import base64
import json

import jwt
from twisted.internet.task import Clock
from twisted.logger import LogLevel, Logger, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from amalgam8.auth import Authenticator, bearer_token, namespace_from_token, parse_modes
from amalgam8.auth import announce_fallback, fallback_problem, fallbacks
from amalgam8.errors import Unauthorized

SECRET = "a-test-secret-that-is-long-enough-for-hs256-and-even-for-hs512!!"
NOW = 1_800_000_000


def bearer(token):
    return b"Bearer " + token.encode("ascii")


def signed(claims, secret=SECRET, algorithm="HS256"):
    return jwt.encode(claims, secret, algorithm=algorithm)


def unsigned(claims, header=None):
    """A JWT with alg none (or C{header}) and an empty signature, built by hand."""

    def part(value):
        raw = json.dumps(value).encode("utf-8")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    return part(header or {"alg": "none", "typ": "JWT"}) + "." + part(claims) + "."


class AuthTestCase(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)

    def authenticator(self, *modes):
        return Authenticator(modes, self.clock,
                             jwt_secret=SECRET if "jwt" in modes else None)

    def assertUnauthorized(self, authenticator, header):
        """C{header} is refused with L{Unauthorized}, whose status is 401."""
        error = self.assertRaises(Unauthorized, authenticator.namespace, header)
        self.assertEqual(error.status, 401)
        self.assertTrue(error.message)
        return error


class ParseModesTests(SynchronousTestCase):
    """L{parse_modes} reads A8_AUTH_MODE."""

    def test_empty(self):
        """Unset or blank means the default mode."""
        self.assertEqual(parse_modes(None), ("default",))
        self.assertEqual(parse_modes(""), ("default",))
        self.assertEqual(parse_modes("  "), ("default",))

    def test_chain(self):
        """A comma-separated list is the chain, in order, case-insensitive."""
        self.assertEqual(parse_modes("jwt,trusted"), ("jwt", "trusted"))
        self.assertEqual(parse_modes(" Trusted , JWT "), ("trusted", "jwt"))

    def test_unknown(self):
        """An unknown mode is a ValueError naming it."""
        error = self.assertRaises(ValueError, parse_modes, "jwt,ldap")
        self.assertIn("ldap", str(error))

    def test_repeated(self):
        """A mode listed twice is a ValueError."""
        self.assertRaises(ValueError, parse_modes, "trusted,trusted")

    def test_empty_member(self):
        """An empty member of the list is a ValueError."""
        self.assertRaises(ValueError, parse_modes, "jwt,")


class BearerTokenTests(SynchronousTestCase):
    """L{bearer_token} reads the Authorization header."""

    def test_absent(self):
        """No header means no token."""
        self.assertIsNone(bearer_token(None))

    def test_scheme_case_insensitive(self):
        """The scheme word is case-insensitive."""
        for scheme in (b"Bearer", b"bearer", b"BEARER", b"bEaReR"):
            self.assertEqual(bearer_token(scheme + b" tok"), "tok")

    def test_spaces(self):
        """Spaces around the token are ignored."""
        self.assertEqual(bearer_token(b"Bearer   tok  "), "tok")

    def test_other_scheme(self):
        """Any scheme but Bearer is refused."""
        for header in (b"Basic ZGVmYXVsdDo=", b"Digest x", b"tok", b"Token tok"):
            self.assertRaises(Unauthorized, bearer_token, header)

    def test_empty(self):
        """An empty bearer token is refused."""
        self.assertRaises(Unauthorized, bearer_token, b"Bearer")
        self.assertRaises(Unauthorized, bearer_token, b"Bearer   ")

    def test_not_ascii(self):
        """A header that is not ASCII is refused."""
        self.assertRaises(Unauthorized, bearer_token, b"Bearer \xc3\xa9")


class DefaultModeTests(AuthTestCase):
    """Unset A8_AUTH_MODE: the single tenant C{default}."""

    def test_no_token(self):
        """No token is the namespace default."""
        self.assertEqual(self.authenticator("default").namespace(None), "default")

    def test_default_token(self):
        """The token C{default} is the namespace default."""
        self.assertEqual(self.authenticator("default").namespace(bearer("default")),
                         "default")

    def test_other_token(self):
        """Any other token is refused."""
        self.assertUnauthorized(self.authenticator("default"), bearer("tenant"))

    def test_basic(self):
        """Basic credentials are refused even though a missing token would pass."""
        self.assertUnauthorized(self.authenticator("default"), b"Basic ZGVmYXVsdDo=")


class TrustedModeTests(AuthTestCase):
    """A8_AUTH_MODE=trusted: the token is the namespace."""

    def test_token_is_namespace(self):
        """The bearer token itself is the namespace."""
        auth = self.authenticator("trusted")
        self.assertEqual(auth.namespace(bearer("team-a")), "team-a")
        self.assertEqual(auth.namespace(bearer("b")), "b")

    def test_missing(self):
        """A missing token is refused."""
        self.assertUnauthorized(self.authenticator("trusted"), None)

    def test_not_a_name(self):
        """A token that is not a valid namespace name is refused."""
        auth = self.authenticator("trusted")
        for token in ("-leading-dash", "with/slash", "x" * 300, "a,b"):
            self.assertUnauthorized(auth, bearer(token))

    def test_basic(self):
        """Basic credentials are refused."""
        self.assertUnauthorized(self.authenticator("trusted"), b"Basic dGVhbTo=")


class JWTModeTests(AuthTestCase):
    """A8_AUTH_MODE=jwt: HS256 with a non-empty namespace claim, exp enforced."""

    def setUp(self):
        AuthTestCase.setUp(self)
        self.auth = self.authenticator("jwt")

    def test_valid(self):
        """A valid token gives its namespace claim."""
        token = signed({"namespace": "team-a", "exp": NOW + 60})
        self.assertEqual(self.auth.namespace(bearer(token)), "team-a")

    def test_no_exp(self):
        """A token without exp does not expire."""
        token = signed({"namespace": "team-a"})
        self.clock.advance(10 ** 9)
        self.assertEqual(self.auth.namespace(bearer(token)), "team-a")

    def test_exp_against_clock(self):
        """exp is checked against the injected clock, not the wall clock."""
        token = signed({"namespace": "team-a", "exp": NOW + 60})
        self.clock.advance(59.9)
        self.assertEqual(self.auth.namespace(bearer(token)), "team-a")
        self.clock.advance(0.1)
        error = self.assertUnauthorized(self.auth, bearer(token))
        self.assertIn("expired", error.message)

    def test_exp_in_wall_clock_future(self):
        """A token valid by the wall clock but expired by the injected clock is refused."""
        clock = Clock()
        clock.advance(4_000_000_000)
        auth = Authenticator(("jwt",), clock, jwt_secret=SECRET)
        self.assertUnauthorized(auth, bearer(signed({"namespace": "a", "exp": NOW})))

    def test_exp_not_a_number(self):
        """An exp that is not a number is refused."""
        self.assertUnauthorized(self.auth, bearer(signed({"namespace": "a", "exp": "soon"})))
        self.assertUnauthorized(self.auth, bearer(signed({"namespace": "a", "exp": True})))

    def test_nbf(self):
        """A token is refused before its nbf, accepted after."""
        token = signed({"namespace": "a", "nbf": NOW + 10})
        self.assertUnauthorized(self.auth, bearer(token))
        self.clock.advance(10)
        self.assertEqual(self.auth.namespace(bearer(token)), "a")

    def test_missing(self):
        """No token is refused."""
        self.assertUnauthorized(self.auth, None)

    def test_not_a_jwt(self):
        """A token that is not a JWT is refused."""
        self.assertUnauthorized(self.auth, bearer("team-a"))

    def test_garbled(self):
        """A JWT-shaped token that does not decode is refused."""
        for token in ("a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", "x.y."):
            self.assertUnauthorized(self.auth, bearer(token))

    def test_truncated_signature(self):
        """A token whose signature was cut is refused."""
        token = signed({"namespace": "a"})
        self.assertUnauthorized(self.auth, bearer(token[:-3]))

    def test_tampered_claims(self):
        """A token whose claims were changed after signing is refused."""
        header, _, signature = signed({"namespace": "a"}).split(".")
        claims = unsigned({"namespace": "admin"}).split(".")[1]
        self.assertUnauthorized(self.auth, bearer(".".join([header, claims, signature])))

    def test_alg_none(self):
        """A token with alg none is refused, however its claims look."""
        self.assertUnauthorized(self.auth, bearer(unsigned({"namespace": "a"})))
        self.assertUnauthorized(
            self.auth, bearer(unsigned({"namespace": "a"}, {"alg": "None", "typ": "JWT"})))
        self.assertUnauthorized(
            self.auth, bearer(jwt.encode({"namespace": "a"}, None, algorithm="none")))

    def test_other_algorithm(self):
        """A token signed with the right secret but another algorithm is refused."""
        token = signed({"namespace": "a"}, algorithm="HS512")
        self.assertUnauthorized(self.auth, bearer(token))

    def test_wrong_key(self):
        """A token signed with another secret is refused."""
        token = signed({"namespace": "a"}, secret="another-secret-that-is-long-enough-!")
        self.assertUnauthorized(self.auth, bearer(token))

    def test_no_namespace(self):
        """A token without a namespace claim is refused."""
        self.assertUnauthorized(self.auth, bearer(signed({"sub": "someone"})))

    def test_empty_namespace(self):
        """A token with an empty or blank namespace claim is refused."""
        self.assertUnauthorized(self.auth, bearer(signed({"namespace": ""})))
        self.assertUnauthorized(self.auth, bearer(signed({"namespace": "   "})))

    def test_namespace_not_a_string(self):
        """A namespace claim that is not a string is refused."""
        for value in (42, ["a"], {"a": 1}, None, True):
            self.assertUnauthorized(self.auth, bearer(signed({"namespace": value})))

    def test_namespace_not_a_name(self):
        """A namespace claim that is not a valid namespace name is refused."""
        self.assertUnauthorized(self.auth, bearer(signed({"namespace": "a/b"})))

    def test_basic(self):
        """Basic credentials are refused."""
        self.assertUnauthorized(self.auth, b"Basic YTpi")

    def test_needs_secret(self):
        """jwt mode without a secret cannot be built."""
        self.assertRaises(ValueError, Authenticator, ("jwt",), self.clock)
        self.assertRaises(ValueError, Authenticator, ("trusted", "jwt"), self.clock,
                          jwt_secret="")


class NamespaceFromTokenTests(SynchronousTestCase):
    """L{namespace_from_token} takes the time it checks against as an argument."""

    def test_now(self):
        """exp is compared with C{now}: valid strictly before it, expired at it."""
        token = signed({"namespace": "a", "exp": 100})
        self.assertEqual(namespace_from_token(token, SECRET, 99.999), "a")
        self.assertRaises(Unauthorized, namespace_from_token, token, SECRET, 100)


class ChainTests(AuthTestCase):
    """Modes chained in order (A8_AUTH_MODE=jwt,trusted and others)."""

    def test_jwt_gives_namespace(self):
        """In jwt,trusted a valid JWT gives its namespace claim."""
        auth = self.authenticator("jwt", "trusted")
        token = signed({"namespace": "team-a", "exp": NOW + 60})
        self.assertEqual(auth.namespace(bearer(token)), "team-a")

    def test_plain_token_falls_through(self):
        """In jwt,trusted a token that is not a JWT is taken by trusted."""
        auth = self.authenticator("jwt", "trusted")
        self.assertEqual(auth.namespace(bearer("team-b")), "team-b")

    def test_expired_jwt_rejected(self):
        """In jwt,trusted an expired JWT is rejected, not passed on to trusted."""
        auth = self.authenticator("jwt", "trusted")
        token = signed({"namespace": "team-a", "exp": NOW + 60})
        self.clock.advance(60)
        self.assertUnauthorized(auth, bearer(token))

    def test_bad_jwt_rejected(self):
        """In jwt,trusted a badly signed or alg-none JWT is rejected, not passed on
        (each would otherwise be a valid trusted namespace name)."""
        auth = self.authenticator("jwt", "trusted")
        for token in (signed({"namespace": "a"}, secret="another-secret-that-is-long-enough-too"),
                      unsigned({"namespace": "a"})):
            self.assertUnauthorized(auth, bearer(token))

    def test_no_token(self):
        """In jwt,trusted no token is refused."""
        self.assertUnauthorized(self.authenticator("jwt", "trusted"), None)

    def test_trusted_then_jwt(self):
        """In trusted,jwt the trusted mode comes first."""
        auth = self.authenticator("trusted", "jwt")
        self.assertEqual(auth.namespace(bearer("team-b")), "team-b")

    def test_default_then_trusted(self):
        """In default,trusted no token is default and any other token its namespace."""
        auth = self.authenticator("default", "trusted")
        self.assertEqual(auth.namespace(None), "default")
        self.assertEqual(auth.namespace(bearer("default")), "default")
        self.assertEqual(auth.namespace(bearer("team-c")), "team-c")

    def test_trusted_then_default(self):
        """In trusted,default a missing token falls through to default."""
        auth = self.authenticator("trusted", "default")
        self.assertEqual(auth.namespace(None), "default")
        self.assertEqual(auth.namespace(bearer("team-c")), "team-c")

    def test_jwt_then_default(self):
        """In jwt,default no token is default, a valid JWT its namespace, and any other
        token is refused."""
        auth = self.authenticator("jwt", "default")
        self.assertEqual(auth.namespace(None), "default")
        self.assertEqual(auth.namespace(bearer(signed({"namespace": "a"}))), "a")
        self.assertUnauthorized(auth, bearer("team-c"))

    def test_basic_refused_in_chain(self):
        """Basic credentials are refused by a chain that would accept no token."""
        self.assertUnauthorized(self.authenticator("trusted", "default"), b"Basic YTpi")


class FallbackTests(AuthTestCase):
    """A weaker mode after a stronger one (jwt > trusted > default) is a fallback."""

    def test_fallbacks(self):
        """L{fallbacks} names each mode that follows a stronger one."""
        for modes, expected in [
                (("jwt", "trusted"), ("trusted",)),
                (("jwt", "default"), ("default",)),
                (("trusted", "default"), ("default",)),
                (("jwt", "trusted", "default"), ("trusted", "default")),
                (("trusted", "jwt", "default"), ("default",)),
                (("default", "trusted", "jwt"), ()),
                (("trusted", "jwt"), ()),
                (("jwt",), ()),
                (("default",), ())]:
            self.assertEqual(fallbacks(modes), expected, modes)

    def test_problem(self):
        """L{fallback_problem} explains a fallback chain in one line, and is None otherwise."""
        problem = fallback_problem(("jwt", "trusted"))
        self.assertEqual(problem.count("\n"), 0)
        self.assertIn("jwt,trusted is a silent downgrade", problem)
        self.assertIn("trusted after jwt", problem)
        self.assertIn("default", fallback_problem(("trusted", "default")))
        self.assertIsNone(fallback_problem(("trusted", "jwt")))
        self.assertIsNone(fallback_problem(("default",)))

    def counted(self, *modes):
        seen = []
        auth = Authenticator(modes, self.clock, jwt_secret=SECRET if "jwt" in modes else None,
                             fallback=seen.append)
        return auth, seen

    def test_fallback_counted(self):
        """Each request the weaker mode accepts is reported with that mode."""
        auth, seen = self.counted("jwt", "trusted")
        self.assertEqual(auth.identify(bearer("tenant-b")), ("tenant-b", "trusted"))
        self.assertEqual(auth.namespace(bearer("tenant-c")), "tenant-c")
        self.assertEqual(seen, ["trusted", "trusted"])

    def test_jwt_still_wins(self):
        """A valid JWT is taken by jwt, not reported as a fallback."""
        auth, seen = self.counted("jwt", "trusted")
        token = signed({"namespace": "team-a", "exp": NOW + 60})
        self.assertEqual(auth.identify(bearer(token)), ("team-a", "jwt"))
        self.assertEqual(seen, [])

    def test_refused_not_counted(self):
        """A refused token is not a fallback."""
        auth, seen = self.counted("jwt", "trusted")
        self.assertUnauthorized(auth, bearer(unsigned({"namespace": "a"})))
        self.assertUnauthorized(auth, None)
        self.assertEqual(seen, [])

    def test_default_fallback_counted(self):
        """In trusted,default a request without a token is a default fallback."""
        auth, seen = self.counted("trusted", "default")
        self.assertEqual(auth.namespace(None), "default")
        self.assertEqual(auth.namespace(bearer("team-c")), "team-c")
        self.assertEqual(seen, ["default"])

    def test_no_fallback_chain(self):
        """A chain without a weaker-after-stronger mode reports nothing."""
        auth, seen = self.counted("trusted", "jwt")
        auth.namespace(bearer("team-b"))
        auth.namespace(bearer(signed({"namespace": "a"})))
        self.assertEqual(seen, [])

    def test_announce(self):
        """L{announce_fallback} logs one warning for a fallback chain, none otherwise."""
        log = Logger(namespace="amalgam8.test")
        with capturedLogs() as events:
            announce_fallback(log, ("jwt", "trusted"))
            announce_fallback(log, ("trusted", "jwt"))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
        self.assertEqual(events[0]["modes"], "jwt,trusted")
        self.assertIn("silent downgrade", events[0]["problem"])


class AdminTests(AuthTestCase):
    """L{Authenticator.is_admin}: a valid JWT for the namespace admin."""

    def test_admin_jwt(self):
        auth = self.authenticator("jwt")
        self.assertTrue(auth.is_admin(bearer(signed({"namespace": "admin"}))))

    def test_not_admin(self):
        """Another namespace, a bad or expired JWT, no token or another scheme: no."""
        auth = self.authenticator("jwt")
        for header in (bearer(signed({"namespace": "team-a"})),
                       bearer(signed({"namespace": "admin", "exp": NOW})),
                       bearer(unsigned({"namespace": "admin"})),
                       bearer("admin"), None, b"Basic YTpi"):
            self.assertFalse(auth.is_admin(header), header)

    def test_trusted_admin_is_not_admin(self):
        """A bare Bearer admin in trusted mode is the tenant admin, not an admin JWT."""
        for modes in (("trusted",), ("trusted", "jwt")):
            self.assertFalse(self.authenticator(*modes).is_admin(bearer("admin")), modes)
