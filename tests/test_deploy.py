# -*- test-case-name: tests.test_deploy -*-
"""
The deployment files (deploy/kubernetes, deploy/docker) checked offline against what they
name: the Kubernetes API schemas (C{kubernetes-validate}'s bundled ones), the programs'
settings tables and twistd plugins, the Dockerfiles, and the registry's RBAC. Each check is
a function returning a list of problems; each test runs it on the shipped files (no problem)
and on a deliberately broken copy (the problem found).
"""

import copy
import io
import json
import os
import re
import socket
import sys
from pathlib import Path

import kubernetes_validate
import yaml
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import TestCase

from amalgam8.controller.tap import SETTINGS as CONTROLLER_SETTINGS
from amalgam8.registry.tap import SETTINGS as REGISTRY_SETTINGS
from amalgam8.sidecar.config import SETTINGS as SIDECAR_SETTINGS
# The bookinfo script, imported once (by path) for the tests of the examples.
from tests.test_examples import bookinfo

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
DOCKER = ROOT / "deploy" / "docker"
MANIFESTS = ("k8s-controlplane.yaml", "k8s-bookinfo.yaml")
# The Kubernetes version the manifests are written for (any bundled schema from 1.21 on has
# discovery.k8s.io/v1 and everything else used).
K8S_VERSION = "1.30.0"

# Image (without registry and tag) -> the settings table of the program it runs.
TABLES = {"a8registry": REGISTRY_SETTINGS, "a8controller": CONTROLLER_SETTINGS,
          "a8sidecar": SIDECAR_SETTINGS}
# Values for the downward-API variables when a container's settings are parsed here.
FIELD_VALUES = {"status.podIP": "10.0.0.7", "metadata.namespace": "default"}
# What the registry's Kubernetes adapter may do, and nothing more.
RBAC = {("", "endpoints"): {"get", "list", "watch"}, ("", "pods"): {"get", "list", "watch"},
        ("discovery.k8s.io", "endpointslices"): {"get", "list", "watch"}}


def manifest(name):
    return [doc for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc]


def all_documents():
    return [doc for name in MANIFESTS for doc in manifest(name)]


def dockerfile(name):
    return (DOCKER / (name + ".Dockerfile")).read_text()


def where(doc):
    return "{} {}".format(doc.get("kind"), doc.get("metadata", {}).get("name"))


def containers(docs):
    """(the document, a container) of every pod template."""
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            yield doc, container


def image_name(image):
    """C{amalgam8/a8sidecar:latest} -> C{a8sidecar}."""
    return image.rsplit("/", 1)[-1].split(":", 1)[0]


# -- checks ---------------------------------------------------------------------------------


def schema_problems(docs):
    problems = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append("{}: {}".format(where(doc), e.message))
    return problems


def env_problems(docs):
    """Every A8_ variable of an amalgam8 container is one of its program's settings."""
    problems = []
    for doc, container in containers(docs):
        table = TABLES.get(image_name(container["image"]))
        if table is None:
            continue
        known = {s.env for s in table if s.env}
        for var in container.get("env", []):
            if var["name"] not in known:
                problems.append("{} {}: {} is no setting of {}".format(
                    where(doc), container["name"], var["name"], image_name(container["image"])))
    return problems


def _environ(container):
    environ = {}
    for var in container.get("env", []):
        if "value" in var:
            environ[var["name"]] = var["value"]
        else:
            environ[var["name"]] = FIELD_VALUES[var["valueFrom"]["fieldRef"]["fieldPath"]]
    return environ


def entrypoint(text):
    """The exec-form ENTRYPOINT of a Dockerfile's text (a list), and its CMD (or [])."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"\s*(ENTRYPOINT|CMD)\s+(\[.*\])\s*$", line)
        if match:
            found[match.group(1)] = json.loads(match.group(2))
    return found.get("ENTRYPOINT"), found.get("CMD", [])


def _plugins():
    return {plugin.tapname: plugin for plugin in getPlugins(IServiceMaker)}


def twistd_problems(argv, environ, what):
    """
    C{argv} (C{twistd ... PLUGIN ...}) parsed as twistd would: its own options, the plugin,
    and the plugin's options with C{environ} as the environment (every value must parse).
    """
    if not argv or argv[0] != "twistd":
        return ["{}: runs {!r}, not twistd".format(what, argv[:1])]
    plugins = _plugins()
    names = [i for i, arg in enumerate(argv) if arg in plugins]
    if not names:
        return ["{}: no amalgam8 twistd plugin in {!r}".format(what, argv)]
    split = names[0]
    errors = io.StringIO()
    stderr, sys.stderr = sys.stderr, errors
    try:
        try:
            ServerOptions().parseOptions(argv[1:split])
        except BaseException as e:
            return ["{}: twistd options {!r}: {}".format(what, argv[1:split], e)]
        options = plugins[argv[split]].options(environ=environ)
        try:
            options.parseOptions(argv[split + 1:])
        except BaseException as e:
            return ["{}: {} {!r}: {} {}".format(what, argv[split], argv[split + 1:], e,
                                                errors.getvalue().strip())]
    finally:
        sys.stderr = stderr
    return []


def command_problems(docs, dockerfiles):
    """Every amalgam8 container's image entrypoint + its args + its env, parsed for real."""
    problems = []
    for doc, container in containers(docs):
        name = image_name(container["image"])
        if name not in TABLES:
            continue
        if "command" in container:
            problems.append("{}: {} overrides the image's entrypoint".format(where(doc), name))
            continue
        argv = entrypoint(dockerfiles[name])[0] + container.get("args", [])
        problems += twistd_problems(argv, _environ(container),
                                    "{} {}".format(where(doc), container["name"]))
    return problems


def dockerfile_problems(dockerfiles):
    """Each program's Dockerfile runs its own plugin (ENTRYPOINT + CMD parse)."""
    problems = []
    for name in TABLES:
        argv, cmd = entrypoint(dockerfiles[name])
        if argv is None:
            problems.append("{}: no exec-form ENTRYPOINT".format(name))
            continue
        if name not in argv:
            problems.append("{}: the ENTRYPOINT runs {!r}, not {}".format(name, argv, name))
        environ = {"A8_SERVICE": "gateway", "A8_PROXY": "true",
                   "A8_REGISTRY_URL": "http://registry:8080",
                   "A8_CONTROLLER_URL": "http://controller:8080"} if name == "a8sidecar" else {}
        problems += twistd_problems(argv + cmd, environ, name + ".Dockerfile")
    return problems


def image_problems(docs, dockerfiles):
    """Every image a manifest names is built by a Dockerfile tagged with that name."""
    problems = []
    for doc, container in containers(docs):
        image = container["image"].split(":", 1)[0]
        name = image_name(image)
        if name not in dockerfiles:
            problems.append("{}: no Dockerfile builds {}".format(where(doc), image))
        elif "-t {} ".format(image) not in dockerfiles[name]:
            problems.append("{}: {}.Dockerfile is not tagged {}".format(where(doc), name, image))
    return problems


def rbac_problems(docs):
    """The registry's service account gets exactly get/list/watch on RBAC's resources."""
    granted = {}
    roles = {(d["kind"], d["metadata"]["name"]): d for d in docs
             if d["kind"] in ("Role", "ClusterRole")}
    bound = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
             and any(s.get("kind") == "ServiceAccount" and s.get("name") == "a8registry"
                     for s in d.get("subjects", []))]
    problems = []
    accounts = {spec.get("serviceAccountName") for _, spec in (
        (d, d["spec"]["template"]["spec"]) for d in docs if d["kind"] == "Deployment"
        and d["metadata"]["name"] == "a8registry")}
    if accounts != {"a8registry"}:
        problems.append("the registry runs as {!r}, not a8registry".format(accounts))
    for binding in bound:
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], ref["name"]))
        if role is None:
            problems.append("{}: no {} {}".format(where(binding), ref["kind"], ref["name"]))
            continue
        for rule in role.get("rules", []):
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    granted.setdefault((group, resource), set()).update(rule.get("verbs", []))
    if granted != RBAC:
        problems.append("the registry is granted {!r}, not {!r}".format(granted, RBAC))
    return problems


def app_problems(docs, dockerfiles):
    """
    Each bookinfo container's entrypoint + args parse with the script's own options, its
    version is the pod's C{version} label, and its sidecar names the same service and tag.
    """
    problems = []
    argv = entrypoint(dockerfiles["bookinfo"])[0]
    for doc, container in containers(docs):
        if image_name(container["image"]) != "bookinfo":
            continue
        what = "{} {}".format(where(doc), container["name"])
        labels = doc["spec"]["template"]["metadata"]["labels"]
        options = bookinfo.Options({})
        try:
            options.parseOptions(argv[2:] + container.get("args", []))
        except usage.UsageError as e:
            problems.append("{}: {}".format(what, e))
            continue
        if options["version"] != labels.get("version"):
            problems.append("{}: version {} under the label {}".format(
                what, options["version"], labels.get("version")))
        sidecars = [c for _, c in containers([doc]) if image_name(c["image"]) == "a8sidecar"]
        wanted = "{}:{}".format(options["service"], options["version"])
        if [_environ(c).get("A8_SERVICE") for c in sidecars] != [wanted]:
            problems.append("{}: not beside one a8sidecar with A8_SERVICE={}".format(
                what, wanted))
    return problems


def all_dockerfiles():
    return {path.name[:-len(".Dockerfile")]: path.read_text()
            for path in DOCKER.glob("*.Dockerfile")}


# -- tests ----------------------------------------------------------------------------------


class DeployTests(TestCase):

    def setUp(self):
        self.docs = all_documents()
        self.dockerfiles = all_dockerfiles()

    def find(self, kind, name, docs=None):
        for doc in self.docs if docs is None else docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        raise AssertionError("no {} {}".format(kind, name))

    def container(self, docs, deployment, name):
        spec = self.find("Deployment", deployment, docs)["spec"]["template"]["spec"]
        return next(c for c in spec["containers"] if c["name"] == name)

    def test_what_is_shipped(self):
        """The control plane and bookinfo: every piece, and the sidecar in every app pod."""
        kinds = {(d["kind"], d["metadata"]["name"]) for d in self.docs}
        for deployment in ("a8registry", "a8controller", "productpage-v1", "details-v1",
                           "reviews-v1", "reviews-v2", "reviews-v3", "ratings-v1", "gateway"):
            self.assertIn(("Deployment", deployment), kinds)
        for service in ("registry", "controller", "productpage", "details", "reviews",
                        "ratings", "gateway"):
            self.assertIn(("Service", service), kinds)
        for doc in manifest("k8s-bookinfo.yaml"):
            if doc["kind"] == "Deployment":
                template = doc["spec"]["template"]
                self.assertIn("version", template["metadata"]["labels"])
                names = [c["name"] for c in template["spec"]["containers"]]
                self.assertEqual(names[-1], "a8sidecar", where(doc))
        registry = _environ(self.container(None, "a8registry", "a8registry"))
        self.assertEqual(registry["A8_K8S_URL"], "in-cluster")
        self.assertIn("A8_K8S_NAMESPACE", registry)

    def test_schemas(self):
        self.assertEqual(schema_problems(self.docs), [])
        self.assertEqual(len(self.docs), len(manifest(MANIFESTS[0])) + len(manifest(MANIFESTS[1])))
        broken = copy.deepcopy(self.docs)
        self.find("Deployment", "a8registry", broken)["spec"]["template"]["spec"][
            "containers"][0]["readinesProbe"] = {"httpGet": {"path": "/uptime"}}
        self.find("Service", "registry", broken)["spec"]["portz"] = []
        problems = schema_problems(broken)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("port", problems[0] + problems[1])

    def test_environment_names(self):
        self.assertEqual(env_problems(self.docs), [])
        broken = copy.deepcopy(self.docs)
        self.container(broken, "reviews-v2", "a8sidecar")["env"].append(
            {"name": "A8_REGISTRY_ADDRESS", "value": "http://registry:8080"})
        self.container(broken, "a8registry", "a8registry")["env"].append(
            {"name": "A8_SERVICE", "value": "registry"})
        problems = env_problems(broken)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("A8_REGISTRY_ADDRESS", problems[0] + problems[1])

    def test_commands_and_values(self):
        """Each container's entrypoint, args and environment parse as its program would."""
        self.assertEqual(command_problems(self.docs, self.dockerfiles), [])
        for deployment, container, change in [
                ("a8registry", "a8registry", lambda c: c["args"].append("--k8s-url=nowhere")),
                ("a8controller", "a8controller", lambda c: c.update(args=["--port", "1"])),
                ("ratings-v1", "a8sidecar",
                 lambda c: c["env"].append({"name": "A8_PROXY", "value": "maybe"})),
                ("gateway", "a8sidecar", lambda c: c.update(command=["sh"]))]:
            broken = copy.deepcopy(self.docs)
            change(self.container(broken, deployment, container))
            problems = command_problems(broken, self.dockerfiles)
            self.assertEqual(len(problems), 1, (deployment, problems))
            self.assertIn(deployment, problems[0])

    def test_dockerfiles(self):
        self.assertEqual(dockerfile_problems(self.dockerfiles), [])
        for name, old, new in [
                ("a8registry", '"a8registry"]', '"a8registr"]'),
                ("a8controller", '"a8controller"]', '"a8registry"]'),
                ("a8sidecar", '"--pidfile="', '"--pidfile"'),
                ("a8registry", '["--listen", "tcp:8080"]', '["--listen-on", "tcp:8080"]'),
                ("a8controller", "ENTRYPOINT [", "ENTRYPOINT twistd [")]:
            broken = dict(self.dockerfiles)
            self.assertIn(old, broken[name])
            broken[name] = broken[name].replace(old, new)
            problems = dockerfile_problems(broken)
            self.assertTrue(problems, (name, new))
            self.assertTrue(all(p.startswith(name) for p in problems), problems)

    def test_apps(self):
        self.assertEqual(app_problems(self.docs, self.dockerfiles), [])
        for deployment, container, change in [
                ("reviews-v3", "reviews", lambda c: c.update(args=["--service", "reviewz"])),
                ("reviews-v2", "reviews", lambda c: c["args"].__setitem__(-1, "v3")),
                ("ratings-v1", "a8sidecar", lambda c: c["env"][0].update(value="ratings:v2"))]:
            broken = copy.deepcopy(self.docs)
            change(self.container(broken, deployment, container))
            problems = app_problems(broken, self.dockerfiles)
            self.assertTrue(problems, deployment)
            self.assertTrue(all(deployment in p for p in problems), problems)

    def test_sidecar_image_has_the_proxy(self):
        """The sidecar image installs Debian's nginx with Lua and what the proxy loads."""
        text = self.dockerfiles["a8sidecar"]
        for package in ("nginx-core", "libnginx-mod-http-lua", "lua-resty-core", "lua-cjson",
                        "libpcre3"):
            self.assertRegex(text, r"apt-get install[^\n]*(\\\n[^\n]*)*\b{}\b".format(
                re.escape(package)))

    def test_images(self):
        self.assertEqual(image_problems(self.docs, self.dockerfiles), [])
        broken = copy.deepcopy(self.docs)
        self.container(broken, "details-v1", "details")["image"] = "amalgam8/detailz:latest"
        self.container(broken, "a8controller", "a8controller")["image"] = "a8/a8controller:1"
        problems = image_problems(broken, self.dockerfiles)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("detailz", problems[0] + problems[1])

    def test_rbac(self):
        self.assertEqual(rbac_problems(self.docs), [])
        for change in [
                lambda d: self.find("Role", "a8registry-catalog", d)["rules"][0]["verbs"].append(
                    "delete"),
                lambda d: self.find("Role", "a8registry-catalog", d)["rules"].pop(),
                lambda d: self.find("Role", "a8registry-catalog", d)["rules"][0][
                    "resources"].append("secrets"),
                lambda d: self.find("RoleBinding", "a8registry-catalog", d)["roleRef"].update(
                    name="other"),
                lambda d: self.find("Deployment", "a8registry", d)["spec"]["template"][
                    "spec"].pop("serviceAccountName")]:
            broken = copy.deepcopy(self.docs)
            change(broken)
            self.assertTrue(rbac_problems(broken))

    def test_bundled_schemas_offline(self):
        """The schemas come from the package itself: validating opens no connection."""
        def refuse(*args, **kwargs):
            raise AssertionError("a connection was opened while validating")

        self.patch(socket, "socket", refuse)
        self.patch(socket, "create_connection", refuse)
        self.assertIn(K8S_VERSION, kubernetes_validate.utils.all_versions())
        self.assertEqual(schema_problems(self.docs), [])
