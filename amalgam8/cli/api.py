# -*- test-case-name: tests.test_a8ctl -*-
"""
The registry and controller clients as a8ctl uses them: L{amalgam8.client}'s, plus the
calls only a8ctl makes (rules by kind and destination, the revision each change made,
liveness), and errors that say which server they came from.
"""

from urllib.parse import quote

import attrs

from amalgam8.client import APIError, ControllerClient, RegistryClient, Unreachable

__all__ = ["Controller", "Registry"]


def _segment(name):
    """A service name as one URL path segment."""
    return quote(name, safe="")


def _header(response, name):
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


class _Named:
    """Mark the errors of a client with the server's role and base URL."""

    role = None

    async def _call(self, *args, **kwargs):
        try:
            return await self._plain_call(*args, **kwargs)
        except (APIError, Unreachable) as e:
            e.role = self.role
            e.base_url = self.url
            raise

    async def health(self, path):
        """
        @return: C{(server header or None, decoded body)} of C{GET path}.
        """
        response, body = await self._call("GET", path)
        server = _header(response, b"Server")
        return (server.decode("latin-1") if server else None), body


@attrs.define
class Registry(_Named, RegistryClient):
    """The registry API, as a8ctl calls it."""

    role = "registry"
    _plain_call = RegistryClient._call

    async def live_instances(self, service):
        """
        The instances of C{service} that are up.

        @raise APIError: 404 when the registry knows no instance of it.
        """
        _, body = await self._call("GET", "/api/v1/services/{}".format(_segment(service)))
        return [i for i in (body or {}).get("instances", [])
                if str(i.get("status", "UP")).upper() == "UP"]

    async def all_instances(self):
        """Every instance, whatever its status."""
        _, instances = await self.instances(status="ALL")
        return instances


@attrs.define
class Controller(_Named, ControllerClient):
    """The controller API, as a8ctl calls it; changes answer the revision they made."""

    role = "controller"
    _plain_call = ControllerClient._call

    async def read(self, **filters):
        """@return: C{(revision, rules)} of C{GET /v1/rules}."""
        return await self.rules(**{k: v for k, v in filters.items() if v})

    by_destination = ControllerClient.rules_by_destination
    of_destination = ControllerClient.rules_of_destination
    create = ControllerClient.create_rules
    update = ControllerClient.update_rules
    replace = ControllerClient.replace_rules
    clear = ControllerClient.clear_rules

    async def delete(self, **filters):
        """@return: C{(revision, ids deleted)}."""
        return await self.delete_rules(**{k: v for k, v in filters.items() if v})
