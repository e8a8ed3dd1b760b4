"""Performance at cluster scale: a seeded cluster generator and the benchmark harness.

`gen` builds a deterministic, realistic cluster (Services of every type,
EndpointSlices spread over nodes, one Node, a KubeProxyConfiguration) as
multi-document YAML or `kubectl get -o json` JSON; `run` times each stage
of the pipeline on those inputs against the floors (`json.loads`, the C YAML
loader, one `"".join`) and checks the budgets README.md's Performance section states.
"""
