"""SIMULATED parts of a Kubernetes cluster, for tests only.

The control plane the tests use is real (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler: see scripts/cluster/). What this package fakes is what sits on the nodes:
kubelet, the Ascend device plugin and the NPUs themselves (node_agent.py), and a container
runtime that runs a pod's command as a local process (runtime.py). Nothing here is product
code.
"""
