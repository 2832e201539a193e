"""Orchestration over the registry: operator commands (admin), reconciling served state with
the lifecycle state file and the repository folder (reconcile), that state file (store),
shadow traffic (shadow) and the evaluation/drift tooling behind the CLI (tools).

Below the data plane (``service``), above the registry and ``offline``; the pure domain it
orchestrates (routing, evaluation, gates, drift, lineage) lives in :mod:`serving.lifecycle`.
"""
