"""The pipeline's steps, one package each, and the plumbing they share.

- ``ingest``, ``transform``, ``train``, ``evaluate``, ``push``: a step each; its ``executor`` module holds the
  plain step function that the kfp component (``pipelines.steps``) and the CLI call.
- ``beam``: the runner and options every Beam step uses, line reading, the TFRecord sink.
- ``artifacts``: storage helpers, output directories, record counts.
- ``devtools``: the simulator and the experiment harness, apart from the product's steps.

A step never imports another step; what two steps share is a contract (``esmm_model.contracts``).
"""
