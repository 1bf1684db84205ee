from setuptools import find_packages, setup

setup(
    name="amalgam8",
    version="0.1.0",
    description="A service mesh for polyglot microservices, on Twisted.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # twisted.plugins is a namespace shared with Twisted: list it explicitly and never ship
    # an __init__.py in it.
    packages=find_packages(include=["amalgam8", "amalgam8.*"]) + ["twisted.plugins"],
    package_data={
        "amalgam8.registry": ["openapi.json"],
        "amalgam8.schemas": ["*.json"],
        "twisted.plugins": ["amalgam8_plugins.py"],
    },
    include_package_data=True,
    install_requires=[
        "twisted[tls]>=24.7.0",
        "klein>=24.8.0",
        "treq>=24.9.1",
        "attrs>=23.2.0",
        "zope.interface>=6.0",
        "pyopenssl>=24.0.0",
        # HS256 JWTs for A8_AUTH_MODE=jwt: a well-kept implementation beats hand-rolled crypto.
        "PyJWT>=2.8.0",
        # The Prometheus text format and histograms for GET /metrics.
        "prometheus-client>=0.20.0",
        # Rules are validated against a JSON Schema (draft 2020-12) kept in the package.
        "jsonschema>=4.18",
        # The sidecar's YAML configuration file (A8_CONFIG), as Amalgam8 0.4 read it.
        "PyYAML>=6.0",
        # Eureka clients send XML bodies: defusedxml refuses DTDs, entity declarations and
        # external references (no entity bombs, no external entities) on top of expat.
        "defusedxml>=0.7.1",
        # The Redis stores (A8_STORE=redis, A8_DATABASE_TYPE=redis): a maintained,
        # non-blocking Twisted Redis protocol (no thread pool, no blocking client).
        "txredisapi>=1.4.10",
    ],
    extras_require={
        "dev": [
            "hypothesis>=6.100",
            "openapi-spec-validator>=0.7",
            # tests/test_deploy.py validates deploy/kubernetes offline against its bundled schemas.
            "kubernetes-validate>=1.30",
        ],
    },
    entry_points={"console_scripts": ["a8ctl = amalgam8.cli.main:entry"]},
    zip_safe=False,
)
