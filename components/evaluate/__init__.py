"""Evaluate: candidate and served model scored on the eval split (``executor``), TFMA metrics and thresholds, exact
AUCs, the blessing gate, and the report with its plots."""
