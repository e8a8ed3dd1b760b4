"""rulegen: compile Kubernetes Services and EndpointSlices into the rules kube-proxy installs."""

__version__ = "0.1.0"
