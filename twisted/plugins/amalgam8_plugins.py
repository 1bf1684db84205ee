from twisted.application.service import ServiceMaker

a8registry = ServiceMaker(
    "amalgam8 registry", "amalgam8.registry.tap", "The amalgam8 service registry.", "a8registry"
)
a8controller = ServiceMaker(
    "amalgam8 controller", "amalgam8.controller.tap", "The amalgam8 rule controller.",
    "a8controller"
)
a8sidecar = ServiceMaker(
    "amalgam8 sidecar", "amalgam8.sidecar.tap",
    "The amalgam8 sidecar: registration, proxy, supervision.", "a8sidecar"
)
