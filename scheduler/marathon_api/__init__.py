"""Marathon's REST API (``/v2/...``, ``/ping``, ``/metrics``) on top of the workload service.

``state`` (the tables Marathon needs besides the scheduler's: versions, deployments, task
times), ``views`` (pure: rows → Marathon's JSON shapes), ``rolling`` (pure: the next
step of a rolling upgrade), ``deployments`` (deployments: create, advance, cancel/roll back),
``events`` (the tenant-scoped event bus and its server-sent events), ``metrics`` (prometheus-client
registry, rendered as Dropwizard JSON too), ``hooks`` (status updates and offers → events and
metrics), ``resources`` + ``apps`` (the Falcon resources), ``appdef`` (definitions as clients
send them), ``openapi_paths``, ``errors``, ``hub`` (wiring).
"""
