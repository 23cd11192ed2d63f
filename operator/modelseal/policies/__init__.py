"""The operator's reconcile decisions, each a small pure function (no I/O, no kopf).

Following cert-manager's controllers: the I/O code in `modelseal.handlers.controller`
gathers its inputs first (the model, its license, the live objects, the Pods), then asks
these functions, one decision at a time, and applies the answers:

* `gates` - whether a model is reconciled at all, the conflicts with objects it does not
  own, whether it may run, which Vault step applies, when to look again;
* `objects` - what to do with each owned object (create, leave, update, put back);
* `readiness` - what the Deployment and the unsealers' Pods say (workload, artifact);
* `reporting` - the object references, Events and metric counts of a status change;
* `licensing` - which models a license re-evaluates, and when it is looked at again.
"""
