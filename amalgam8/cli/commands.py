# -*- test-case-name: tests.test_a8ctl -*-
"""
The a8ctl commands (SPEC A7). Each is an C{async} function of a L{Context} and the parsed
options, answering an L{Outcome}; it raises L{CommandError} (or lets the clients'
C{APIError}/C{Unreachable} through) for anything that goes wrong, and C{main} turns those
into one line on stderr and exit status 1.
"""

import json
import os

import attrs
import yaml

from amalgam8 import __version__, live
from amalgam8.client import APIError, Unreachable
from amalgam8.cli.output import Outcome, table
from amalgam8.cli.selectors import (
    BadSyntax,
    cookie_pattern,
    describe_action,
    describe_match,
    describe_routes,
    parse_action,
    parse_header,
    parse_selector,
    parse_service,
    parse_tags,
    route_rules,
    version_of,
)
from amalgam8.rules import InvalidRequest, validate_rules

__all__ = ["CommandError", "Context", "COMMANDS", "wait_until_live", "WaitTimeout",
           "RuleRejected"]

class CommandError(Exception):
    """
    A command cannot do what it was asked; the message is the one line to show.

    @cvar status: the exit status.
    """

    status = 1


class WaitTimeout(CommandError):
    """C{--wait} ran out of time before every proxy had the change."""


class RuleRejected(WaitTimeout):
    """
    C{--wait}: a proxy applied the revision but skipped a rule it could not compile. Like
    L{WaitTimeout}, the change was made but is not live (so main reports the change first).
    """


@attrs.define
class Context:
    """
    What every command works with.

    @ivar reactor: an C{IReactorTime} (C{--wait} polls on it).
    @ivar registry: an L{amalgam8.cli.api.Registry}.
    @ivar controller: an L{amalgam8.cli.api.Controller}.
    @ivar stdin: the text stream C{-f -} reads.
    @ivar stderr: the text stream for errors (and, on a terminal, progress).
    """

    reactor: object
    registry: object
    controller: object
    stdin: object = None
    stderr: object = None


# -- helpers ---------------------------------------------------------------------------------


def _sorted_rules(rules):
    return sorted(rules, key=lambda r: (-r.get("priority", 0), r.get("id", "")))


def _pct(weight):
    """A weight as a percentage for people: 0.1 -> 10, 0.125 -> 12.5."""
    value = round(weight * 100, 6)
    return int(value) if float(value).is_integer() else value


def _check_rules(rules, what):
    """Validate rules a8ctl built, before sending them: a bad value is the user's."""
    try:
        validate_rules({"rules": json.loads(json.dumps(rules))}, assign_ids=False)
    except InvalidRequest as e:
        raise CommandError("{}: {}".format(what, e.message))


# -- services --------------------------------------------------------------------------------


async def service_list(ctx, options):
    names = await ctx.registry.services()
    counts = {name: {} for name in names}
    shown_as = {}       # the same tags in any order are one version, shown as first seen
    for instance in await ctx.registry.all_instances():
        service = instance.get("service_name")
        tags = instance.get("tags") or ()
        version = shown_as.setdefault(frozenset(tags), version_of(tags))
        status = str(instance.get("status", "UP")).upper()
        by_status = counts.setdefault(service, {}).setdefault(version, {})
        by_status[status] = by_status.get(status, 0) + 1
    data = []
    rows = []
    for service in sorted(counts):
        shown = []
        for version in sorted(counts[service]):
            by_status = counts[service][version]
            text = str(by_status.get("UP", 0))
            for status in sorted(s for s in by_status if s != "UP"):
                text += ", {} {}".format(by_status[status], status)
            shown.append("{}({})".format(version, text))
        data.append({"service": service, "instances": shown,
                     "versions": counts[service]})
        rows.append([service, shown])
    return Outcome(data, table(["Service", "Instances"], rows))


# -- routes ----------------------------------------------------------------------------------


async def route_list(ctx, options):
    routes = await ctx.controller.by_destination("routes")
    names = set(await ctx.registry.services())
    data = []
    rows = []
    for service in sorted(names | set(routes)):
        default, selectors = describe_routes(routes.get(service, []))
        data.append({"service": service, "default": default, "selectors": selectors})
        rows.append([service, default, selectors])
    return Outcome(data, table(["Service", "Default Version", "Version Selectors"], rows))


async def route_set(ctx, options):
    service = _service_name(options.service)
    default = parse_tags(options.default, "--default version")
    selectors = [parse_selector(text) for text in options.selector or ()]
    source = parse_service(options.source, "--source") if options.source else None
    rules = route_rules(service, default, selectors, source)
    _check_rules(rules, "bad route for {}".format(service))
    revision, ids = await ctx.controller.replace("routes", service, rules)
    stored = [dict(rule, id=rule_id) for rule, rule_id in zip(rules, ids)]
    default_text, shown = describe_routes(stored)
    text = "Set routing rules for {}: default {}".format(service, default_text)
    if shown:
        text += "; " + ", ".join(shown)
    return Outcome({"service": service, "ids": ids, "revision": revision, "rules": stored},
                   text, revision, changes=True)


async def route_delete(ctx, options):
    service = _service_name(options.service)
    revision, ids = await ctx.controller.clear("routes", service)
    if not ids:
        raise CommandError("unknown service {}: it has no route rules".format(service))
    return Outcome({"service": service, "ids": ids, "revision": revision},
                   "Deleted routing rules for {} ({} rule{})".format(
                       service, len(ids), "" if len(ids) == 1 else "s"),
                   revision, changes=True)


def _service_name(text):
    name, tags = parse_service(text)
    if tags:
        raise CommandError("bad service {!r}: give the name only, without tags".format(text))
    return name


# -- actions ---------------------------------------------------------------------------------


async def action_list(ctx, options):
    services = await ctx.controller.by_destination("actions")
    data = []
    rows = []
    for destination in sorted(services):
        for rule in _sorted_rules(services[destination]):
            match = rule.get("match") or {}
            source = None
            if match.get("source"):
                source = match["source"].get("name", "")
                if match["source"].get("tags"):
                    source += ":" + ",".join(match["source"]["tags"])
            headers = ["{}:{}".format(k, v) for k, v in (match.get("headers") or {}).items()]
            actions = [describe_action(a) for a in rule.get("actions", [])]
            data.append({"id": rule.get("id"), "destination": destination,
                         "source": source, "headers": headers,
                         "priority": rule.get("priority", 0), "actions": actions})
            rows.append([destination, source, headers, rule.get("priority", 0), actions,
                         rule.get("id")])
    return Outcome(data, table(
        ["Destination", "Source", "Headers", "Priority", "Actions", "Rule Id"], rows))


async def action_add(ctx, options):
    destination = _service_name(options.destination)
    if not (options.source or options.header or options.cookie):
        raise CommandError("action-add needs at least one of --source, --header or --cookie")
    if not options.action:
        raise CommandError("action-add needs at least one --action")
    match = {}
    if options.source:
        name, tags = parse_service(options.source, "--source")
        match["source"] = {"name": name}
        if tags:
            match["source"]["tags"] = tags
    headers = {}
    for text in options.header or ():
        name, pattern = parse_header(text, "--header")
        headers[name] = pattern
    for cookie in options.cookie or ():
        if not cookie.strip() or any(c in cookie for c in ";, \""):
            raise CommandError("bad --cookie {!r}: expected NAME=VALUE or NAME".format(
                cookie))
        if "Cookie" in headers:
            raise CommandError("give one --cookie, or a --header on Cookie, not both")
        headers["Cookie"] = cookie_pattern(cookie.strip())
    if headers:
        match["headers"] = headers
    actions = [parse_action(text) for text in options.action]
    if options.priority is not None:
        priority = options.priority
    else:
        current = await ctx.controller.of_destination("actions", destination)
        priority = 10
        for rule in current:
            if rule.get("priority", 0) >= priority:
                priority = rule["priority"] + 10
    rule = {"destination": destination, "priority": priority, "match": match,
            "actions": actions}
    _check_rules([rule], "bad action rule for {}".format(destination))
    revision, ids = await ctx.controller.create([rule])
    rule["id"] = ids[0] if ids else None
    return Outcome({"id": rule["id"], "revision": revision, "rule": rule},
                   "Added action rule {} for {} (priority {}): {}".format(
                       rule["id"], destination, priority,
                       ", ".join(describe_action(a) for a in actions)),
                   revision, changes=True)


async def action_clear(ctx, options):
    if options.service and options.destination and options.service != options.destination:
        raise CommandError("action-clear takes one destination, not {} and {}".format(
            options.service, options.destination))
    options.destination = options.destination or options.service
    if options.destination:
        destinations = [_service_name(options.destination)]
    else:
        destinations = sorted(await ctx.controller.by_destination("actions"))
    revision = None
    deleted = []
    for destination in destinations:
        changed, ids = await ctx.controller.clear("actions", destination)
        if ids:
            revision = changed
            deleted.extend(ids)
    where = destinations[0] if options.destination else "every service"
    if deleted:
        text = "Cleared the action rules of {} ({} rule{})".format(
            where, len(deleted), "" if len(deleted) == 1 else "s")
    else:
        text = "No action rules to clear for {}".format(where)
    return Outcome({"ids": deleted, "revision": revision}, text, revision, changes=True)


# -- rules -----------------------------------------------------------------------------------


def _ids(values):
    ids = []
    for value in values or ():
        ids.extend(part.strip() for part in value.split(",") if part.strip())
    return ids


async def rule_delete(ctx, options):
    ids = _ids(options.ids)
    if not ids:
        raise CommandError("rule-delete needs at least one rule id")
    _, found = await ctx.controller.read(id=",".join(ids))
    missing = [i for i in ids if i not in {r.get("id") for r in found}]
    if missing:
        raise CommandError("no rule with id {}".format(", ".join(missing)))
    revision, deleted = await ctx.controller.delete(id=",".join(ids))
    return Outcome({"ids": deleted, "revision": revision},
                   "Deleted rule{} {}".format("" if len(deleted) == 1 else "s",
                                              ", ".join(deleted)),
                   revision, changes=True)


def load_rules(path, stdin=None):
    """
    Read rules from a C{.json} or C{.yaml} file (C{-} is stdin, as YAML): a document
    C{{"rules": [...]}}, a list of rules, or one rule.

    @raise CommandError: when the file cannot be read or is none of those.
    """
    try:
        if path == "-":
            if stdin is None:
                raise CommandError("no standard input to read rules from")
            text = stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except OSError as e:
        raise CommandError("cannot read {}: {}".format(path, e.strerror or e))
    except UnicodeDecodeError:
        raise CommandError("cannot read {}: it is not UTF-8 text".format(path))
    extension = os.path.splitext(path)[1].lower()
    if extension == ".json":
        try:
            document = json.loads(text)
        except ValueError as e:
            raise CommandError("{} is not valid JSON: {}".format(path, e))
    else:
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            detail = getattr(e, "problem", None) or str(e).splitlines()[0]
            if where is not None:
                detail += " (line {}, column {})".format(where.line + 1, where.column + 1)
            raise CommandError("{} is not valid YAML: {}".format(path, detail))
    if isinstance(document, dict) and "rules" in document:
        rules = document["rules"]
    elif isinstance(document, dict):
        rules = [document]
    else:
        rules = document
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise CommandError("{} holds no rules: expected {{\"rules\": [...]}}, a list of rules "
                           "or one rule".format(path))
    if not rules:
        raise CommandError("{} holds no rules".format(path))
    try:
        rules = json.loads(json.dumps(rules, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise CommandError("{} holds a value JSON cannot carry: {}".format(path, e))
    return rules


async def rule_create(ctx, options):
    rules = load_rules(options.file, ctx.stdin)
    revision, ids = await ctx.controller.create(rules)
    return Outcome({"ids": ids, "revision": revision},
                   "Created rule{} {}".format("" if len(ids) == 1 else "s", ", ".join(ids)),
                   revision, changes=True)


async def rule_update(ctx, options):
    rules = load_rules(options.file, ctx.stdin)
    missing = [n for n, rule in enumerate(rules) if "id" not in rule]
    if missing:
        raise CommandError("rule {} of {} has no id: rule-update changes existing rules "
                           "(use rule-create for new ones)".format(missing[0], options.file))
    revision, ids = await ctx.controller.update(rules)
    return Outcome({"ids": ids, "revision": revision},
                   "Updated rule{} {}".format("" if len(ids) == 1 else "s", ", ".join(ids)),
                   revision, changes=True)


def _summary(rule):
    if "route" in rule:
        parts = []
        for backend in rule["route"].get("backends", []):
            text = version_of(backend.get("tags", ()))
            if "weight" in backend:
                text += " {}%".format(_pct(backend["weight"]))
            parts.append(text)
        return "route: " + ", ".join(parts)
    return "actions: " + ", ".join(describe_action(a) for a in rule.get("actions", []))


async def rule_get(ctx, options):
    revision, rules = await ctx.controller.read(
        id=",".join(_ids(options.id)) or None,
        tag=",".join(_ids(options.tag)) or None,
        destination=",".join(_ids(options.destination)) or None)
    rows = [[rule.get("id"), rule.get("destination"), rule.get("priority", 0),
             rule.get("tags", []), describe_match(rule.get("match")), _summary(rule)]
            for rule in rules]
    return Outcome({"rules": rules, "revision": revision}, table(
        ["Rule Id", "Destination", "Priority", "Tags", "Match", "Route / Actions"], rows))


# -- traffic ---------------------------------------------------------------------------------


def _split(rules, service):
    """
    The rule that routes all of C{service}'s unconditional traffic, and its backends as
    C{(default, new)}: the unweighted backend and the weighted one (L{None} when traffic is
    not being split).

    @raise CommandError: when no such rule exists, or it is not a plain default or a
        two-way split.
    """
    plain = [r for r in _sorted_rules(rules) if not r.get("match")]
    if not plain:
        raise CommandError("{} has no default route: set one first with "
                           "'a8ctl route-set {} --default VERSION'".format(service, service))
    rule = plain[0]
    backends = rule["route"]["backends"]
    unweighted = [b for b in backends if "weight" not in b]
    weighted = [b for b in backends if "weight" in b]
    if len(unweighted) == 1 and not weighted:
        return rule, unweighted[0], None
    if len(unweighted) == 1 and len(weighted) == 1:
        return rule, unweighted[0], weighted[0]
    raise CommandError("{}'s default route has {} backends ({}): traffic commands handle a "
                       "default version and at most one new version".format(
                           service, len(backends),
                           ", ".join(version_of(b.get("tags", ())) for b in backends)))


async def _check_live(ctx, service, versions):
    """
    @raise CommandError: for an unknown service, or a version with no live instance.
    """
    try:
        instances = await ctx.registry.live_instances(service)
    except APIError as e:
        if e.status == 404:
            raise CommandError("unknown service {}: the registry has no instances of it"
                               .format(service))
        raise
    for tags in versions:
        if not any(set(tags) <= set(i.get("tags") or ()) for i in instances):
            raise CommandError("{} has no live instances of version {}".format(
                service, version_of(tags)))


def _num(value):
    value = round(value, 6)
    return int(value) if float(value).is_integer() else value


def _split_line(service, split):
    """C{reviews: v1 90% -> v3 10%}."""
    return "{}: {}".format(service, " -> ".join(
        "{} {}%".format(version_of(tags), pct) for tags, pct in split))


def _amount(options):
    amount = options.amount
    if not 0 < amount <= 100:
        raise CommandError("--amount must be above 0 and at most 100, not {:g}"
                           .format(amount))
    return amount


async def _traffic_state(ctx, service):
    try:
        rules = await ctx.controller.of_destination("routes", service)
    except APIError as e:
        if e.status != 404:
            raise
        rules = []
    if not rules:
        await _check_live(ctx, service, [])     # an unknown service says so
    return _split(rules, service)


def _current_split(default, current):
    pct = _pct(current["weight"])
    return [(default["tags"], _num(100 - pct)), (current["tags"], pct)]


async def _shift(ctx, service, rule, backends, split, state, note=None):
    changed = dict(rule, route=dict(rule["route"], backends=backends))
    revision, _ = await ctx.controller.update([changed])
    text = _split_line(service, split)
    if note:
        text += " ({})".format(note)
    data = {"service": service, "state": state,
            "split": {version_of(tags): pct for tags, pct in split},
            "rule": rule["id"], "revision": revision}
    return Outcome(data, text, revision, changes=True)


async def traffic_start(ctx, options):
    service = _service_name(options.service)
    new = parse_tags(options.version, "version")
    amount = _amount(options)
    rule, default, current = await _traffic_state(ctx, service)
    if current is not None:
        raise CommandError("traffic of {} is already being split ({}): use traffic-step or "
                           "traffic-abort".format(service, _split_line(
                               service, _current_split(default, current)).split(": ", 1)[1]))
    if set(new) == set(default["tags"]):
        raise CommandError("{} is already the default version of {}".format(
            version_of(new), service))
    await _check_live(ctx, service, [default["tags"], new])
    if amount >= 100:
        return await _shift(ctx, service, rule, [dict(default, tags=new)], [(new, 100)],
                            "complete", "transfer from {} complete".format(
                                version_of(default["tags"])))
    weight = round(amount / 100, 6)
    split = [(default["tags"], _num(100 - _pct(weight))), (new, _pct(weight))]
    return await _shift(ctx, service, rule, [{"tags": new, "weight": weight}, default],
                        split, "started")


async def traffic_step(ctx, options):
    service = _service_name(options.service)
    amount = _amount(options)
    rule, default, current = await _traffic_state(ctx, service)
    if current is None:
        raise CommandError("traffic of {} is not being split: start with 'a8ctl "
                           "traffic-start {} VERSION'".format(service, service))
    await _check_live(ctx, service, [default["tags"], current["tags"]])
    pct = _num(_pct(current["weight"]) + amount)
    if pct >= 100:
        backend = {k: v for k, v in current.items() if k != "weight"}
        return await _shift(ctx, service, rule, [backend], [(current["tags"], 100)],
                            "complete", "transfer from {} complete".format(
                                version_of(default["tags"])))
    weight = round(pct / 100, 6)
    backends = [dict(b, weight=weight) if b is current else b
                for b in rule["route"]["backends"]]
    split = [(default["tags"], _num(100 - pct)), (current["tags"], pct)]
    return await _shift(ctx, service, rule, backends, split, "stepped")


async def traffic_abort(ctx, options):
    service = _service_name(options.service)
    rule, default, current = await _traffic_state(ctx, service)
    if current is None:
        raise CommandError("traffic of {} is not being split: nothing to abort".format(
            service))
    await _check_live(ctx, service, [default["tags"]])
    return await _shift(ctx, service, rule, [default], [(default["tags"], 100)], "aborted",
                        "transfer to {} aborted".format(version_of(current["tags"])))


# -- info ------------------------------------------------------------------------


def _failure(e):
    if isinstance(e, APIError):
        return "error {}: {}".format(e.status, e.message)
    if isinstance(e, Unreachable):
        return "unreachable ({})".format(_reason(e))
    return "error: {}".format(e)


def _reason(e):
    cause = e.__cause__ or e
    text = str(cause).strip() or type(cause).__name__
    return " ".join(text.split())


async def info(ctx, options):
    data = {"a8ctl_version": __version__}
    rows = [["a8ctl version", __version__]]
    for role, client, path in (("controller", ctx.controller, "/health"),
                               ("registry", ctx.registry, "/uptime")):
        entry = data[role] = {"url": client.url}
        rows.append(["{} URL".format(role.capitalize()), client.url])
        try:
            server, body = await client.health(path)
        except (APIError, Unreachable) as e:
            entry["status"] = _failure(e)
            rows.append([role.capitalize(), entry["status"]])
            continue
        entry["status"] = "up"
        version = body.get("version") if isinstance(body, dict) else None
        entry["version"] = version or server
        text = "up"
        if entry["version"]:
            text += " ({})".format(entry["version"])
        if role == "registry" and isinstance(body, dict) and "uptime" in body:
            entry["uptime"] = body["uptime"]
            text += ", uptime {:g}s".format(body["uptime"])
        rows.append([role.capitalize(), text])
        try:
            if role == "controller":
                status = await client.status()
                entry.update(revision=status.get("revision"), proxies=status.get("proxies"),
                             in_sync=status.get("in_sync"))
                rows.append(["Rule revision", status.get("revision")])
                rows.append(["Proxies in sync", "{} of {}".format(
                    status.get("in_sync"), status.get("proxies"))])
            else:
                services = await client.services()
                entry["services"] = len(services)
                rows.append(["Services", len(services)])
        except (APIError, Unreachable) as e:
            entry["error"] = _failure(e)
            rows.append(["{} API".format(role.capitalize()), entry["error"]])
    return Outcome(data, table(["Setting", "Value"], rows))


# -- waiting ---------------------------------------------------------------------------------


async def wait_until_live(ctx, revision, timeout):
    """
    L{amalgam8.live.wait_until_live} on a8ctl's controller, its errors as a8ctl's.

    @raise WaitTimeout: when C{timeout} seconds pass first.
    @raise RuleRejected: as soon as a proxy reports that it skipped a rule of the revision.
    """
    try:
        return await live.wait_until_live(ctx.reactor, ctx.controller, revision, timeout)
    except live.Rejected as e:
        raise RuleRejected(str(e)) from None
    except live.NotLive as e:
        raise WaitTimeout(str(e)) from None


COMMANDS = {
    "service-list": service_list,
    "route-list": route_list,
    "route-set": route_set,
    "route-delete": route_delete,
    "action-list": action_list,
    "action-add": action_add,
    "action-clear": action_clear,
    "rule-delete": rule_delete,
    "rule-create": rule_create,
    "rule-update": rule_update,
    "rule-get": rule_get,
    "traffic-start": traffic_start,
    "traffic-step": traffic_step,
    "traffic-abort": traffic_abort,
    "info": info,
}

# BadSyntax is a user's mistake too: main reports it like a CommandError.
USER_ERRORS = (CommandError, BadSyntax)
