# -*- test-case-name: tests.test_auth -*-
"""
Bearer token -> namespace, as SPEC A1 describes: the modes C{default}, C{trusted} and C{jwt},
chained in the order given (C{"jwt,trusted"}).

A mode either names the namespace, passes the token on to the next mode (it does not
recognise it), or rejects it outright (a JWT that is expired or badly signed is never handed
on to C{trusted}, so it cannot become a namespace by accident).

The modes rank C{jwt} > C{trusted} > C{default}. A chain in which a weaker mode follows a
stronger one (C{jwt,trusted}, C{jwt,default}, C{trusted,default}) lets a request the
stronger mode would refuse in through the weaker one; L{fallback_problem} says why, the
servers refuse such a chain at start unless C{--allow-trusted-fallback} names the migration,
and the L{Authenticator} reports each request such a fallback accepted.
"""

import re

import attrs
import jwt

from amalgam8.errors import Unauthorized

__all__ = [
    "Authenticator",
    "MODES",
    "ADMIN_NAMESPACE",
    "parse_modes",
    "fallbacks",
    "fallback_problem",
    "announce_fallback",
    "namespace_from_token",
]

MODES = ("default", "trusted", "jwt")
_STRENGTH = {"default": 0, "trusted": 1, "jwt": 2}
DEFAULT_NAMESPACE = "default"
ADMIN_NAMESPACE = "admin"
_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,254}")
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]+={0,2}\.[A-Za-z0-9_-]*={0,2}")


class _Pass(Exception):
    """This mode does not recognise the token; try the next one."""


def parse_modes(text):
    """
    Parse C{A8_AUTH_MODE}: empty means C{default}; otherwise a comma-separated list.

    @raise ValueError: for an unknown or repeated mode.
    """
    if text is None or not text.strip():
        return ("default",)
    modes = tuple(part.strip().lower() for part in text.split(","))
    for mode in modes:
        if mode not in MODES:
            raise ValueError(
                "unknown auth mode {!r} (expected a comma-separated list of {})".format(
                    mode, ", ".join(MODES)
                )
            )
    if len(set(modes)) != len(modes):
        raise ValueError("auth mode listed twice: {!r}".format(text))
    return modes


def fallbacks(modes):
    """
    The modes of a chain that follow a stronger one (C{("trusted",)} for C{jwt,trusted}):
    each accepts requests a stronger mode before it passed on.
    """
    found, strongest = [], -1
    for mode in modes:
        if _STRENGTH[mode] < strongest:
            found.append(mode)
        strongest = max(strongest, _STRENGTH[mode])
    return tuple(found)


def fallback_problem(modes):
    """
    Why a chain with a weaker mode after a stronger one is a downgrade (one line), or
    L{None} for a chain without one.
    """
    weaker = fallbacks(modes)
    if not weaker:
        return None
    stronger = modes[0]
    what = {"trusted": "any bare `Bearer <namespace>`",
            "default": "a request without a token (as namespace default)"}
    return "{} is a silent downgrade: {} after {} accepts {} that {} refuses".format(
        ",".join(modes), " and ".join(weaker), stronger,
        " and ".join(what[mode] for mode in weaker), stronger)


def announce_fallback(log, modes):
    """Log, at start, the warning that C{modes} fall back to a weaker mode (if they do)."""
    problem = fallback_problem(modes)
    if problem is not None:
        log.warn("auth fallback allowed (--allow-trusted-fallback): {problem}; each request "
                 "it accepts is counted in auth_fallback_total", problem=problem,
                 modes=",".join(modes))


def bearer_token(header):
    """
    Extract the token of an C{Authorization} header value.

    @param header: the raw header (bytes) or L{None}.
    @return: the token as text, or L{None} when the header is absent.
    @raise Unauthorized: for any other scheme, or an empty or non-ASCII token.
    """
    if header is None:
        return None
    try:
        text = header.decode("ascii").strip()
    except UnicodeDecodeError:
        raise Unauthorized("the Authorization header is not ASCII")
    scheme, _, token = text.partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthorized("only the Bearer scheme is accepted")
    token = token.strip()
    if not token:
        raise Unauthorized("empty bearer token")
    return token


@attrs.frozen
class Authenticator:
    """
    Map a request's bearer token to a namespace.

    @ivar modes: the modes, in chain order.
    @ivar jwt_secret: the HS256 secret for C{jwt} mode.
    @ivar clock: an C{IReactorTime} (C{exp} is checked against C{clock.seconds()}).
    @ivar fallback: called with the mode for each token a weaker mode after a stronger one
        accepted (L{fallbacks}), or L{None}.
    """

    modes: tuple = attrs.field(converter=tuple)
    clock: object
    jwt_secret: str = None
    fallback: object = None
    _weaker: tuple = attrs.field(init=False, repr=False, eq=False)

    @_weaker.default
    def _weaker_modes(self):
        return fallbacks(self.modes)

    def __attrs_post_init__(self):
        if "jwt" in self.modes and not self.jwt_secret:
            raise ValueError("auth mode jwt needs a JWT secret (A8_JWT_SECRET)")

    def namespace(self, authorization):
        """
        @param authorization: the raw C{Authorization} header, or L{None}.
        @return: the namespace (text).
        @raise Unauthorized: when no mode accepts the token.
        """
        return self.identify(authorization)[0]

    def identify(self, authorization):
        """
        Like L{namespace}, and say which mode accepted the token.

        @return: C{(namespace, mode)}.
        """
        token = bearer_token(authorization)
        for mode in self.modes:
            try:
                namespace = getattr(self, "_" + mode)(token)
            except _Pass:
                continue
            if mode in self._weaker and self.fallback is not None:
                self.fallback(mode)
            return namespace, mode
        if token is None:
            raise Unauthorized("a bearer token is required")
        raise Unauthorized("the bearer token is not accepted")

    def is_admin(self, authorization):
        """
        Whether C{authorization} carries a valid JWT for the namespace C{admin} (only a
        chain with C{jwt} has one; a bad or absent token is not an error here).
        """
        if "jwt" not in self.modes:
            return False
        try:
            namespace = self._jwt(bearer_token(authorization))
        except (_Pass, Unauthorized):
            return False
        return namespace == ADMIN_NAMESPACE

    def _default(self, token):
        if token is None or token == DEFAULT_NAMESPACE:
            return DEFAULT_NAMESPACE
        raise _Pass()

    def _trusted(self, token):
        if token is None:
            raise _Pass()
        if not _NAMESPACE.fullmatch(token):
            raise Unauthorized("the bearer token is not a valid namespace name")
        return token

    def _jwt(self, token):
        if token is None or not _JWT_SHAPE.fullmatch(token):
            raise _Pass()
        return namespace_from_token(token, self.jwt_secret, self.clock.seconds())


def namespace_from_token(token, secret, now):
    """
    Verify an HS256 JWT and return its C{namespace} claim.

    @param now: the current time (POSIX seconds) against which C{exp} and C{nbf} are checked.
    @raise Unauthorized: for a malformed token, any algorithm but HS256 (C{none} included), a
        wrong signature, an expired token or a missing or empty C{namespace}.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise Unauthorized("malformed JWT")
    if header.get("alg") != "HS256":
        raise Unauthorized("JWT algorithm must be HS256")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "verify_aud": False, "verify_iss": False},
        )
    except jwt.InvalidSignatureError:
        raise Unauthorized("JWT signature does not verify")
    except jwt.PyJWTError:
        raise Unauthorized("malformed JWT")
    except Exception:
        raise Unauthorized("malformed JWT")
    if not isinstance(claims, dict):
        raise Unauthorized("malformed JWT")
    exp = claims.get("exp")
    if exp is not None:
        if isinstance(exp, bool) or not isinstance(exp, (int, float)):
            raise Unauthorized("JWT exp claim is not a number")
        if now >= exp:
            raise Unauthorized("JWT has expired")
    nbf = claims.get("nbf")
    if nbf is not None:
        if isinstance(nbf, bool) or not isinstance(nbf, (int, float)):
            raise Unauthorized("JWT nbf claim is not a number")
        if now < nbf:
            raise Unauthorized("JWT is not valid yet")
    namespace = claims.get("namespace")
    if not isinstance(namespace, str) or not namespace.strip():
        raise Unauthorized("JWT has no namespace claim")
    if not _NAMESPACE.fullmatch(namespace):
        raise Unauthorized("JWT namespace claim is not a valid namespace name")
    return namespace
