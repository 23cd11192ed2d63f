"""The operator's controllers (I/O, no kopf), one concern a module, over the pure
decisions in `modelseal.policies`:

* `context` - what they share: clients, settings, the clock, the in-memory state;
* `events` - core/v1 Events and log lines about a custom resource;
* `models` - the ProtectedModel reconcile: gather its inputs, then decide and apply;
* `vaultstep` - the model's Vault access: provisioned or withdrawn;
* `apply` - the owned objects: created, updated, put back when they drifted;
* `identity` - who runs as the model's ServiceAccount: intruders deleted, legacy account
  migrated;
* `status` - the status patches, with an Event, a metric and an audit record per change;
* `deletion` - the finalizer's work: stop serving, then withdraw Vault access;
* `licenses` - the ModelLicense reconcile;
* `gc` - Vault roles whose model is gone.

`modelseal.handlers.reconciler.Reconciler` puts them together behind the work queue.
"""
