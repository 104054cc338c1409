"""The ESMM family and the paper's competitors, one frozen ``VariantSpec`` per ``model.variant``.

Adding a variant is one entry in ``VARIANTS``: the model builds its second network from
``second_head`` and ``shared_tables`` (and an imputation tower for a ``dr`` counterfactual), and
``esmm_model.losses`` trains it from ``loss``, ``cvr_weights`` and ``counterfactual``. This module
imports no TensorFlow, so the config can validate names with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass(frozen=True)
class VariantSpec:
    """How one variant's second network is built and trained.

    second_head: what the second tower predicts: ``cvr``, or ``ctcvr`` (pCVR is then pCTCVR / pCTR).
    shared_tables: the CTR and the second tower read one set of embedding tables.
    loss: the label of the second loss term, ``ctcvr`` or ``cvr``. A ``ctcvr`` loss on a ``cvr``
        head fits pCTR · pCVR over all impressions (ESMM); otherwise the head's own BCE.
    cvr_weights: per-impression weights of a ``cvr`` loss, a name in ``losses.CVR_WEIGHTS``
        (``clicked`` trains CVR on clicked impressions only).
    table_row: the variant's row in the paper's Table 2 (``esmm experiment --variants``).
    counterfactual: ESCM²'s counterfactual CVR regulariser added to an ESMM loss, ``ips`` or ``dr``
        (Wang et al., SIGIR 2022); ``dr`` adds a tower that imputes the CVR error on every impression.
    """

    second_head: Literal["cvr", "ctcvr"]
    shared_tables: bool
    loss: Literal["cvr", "ctcvr"]
    cvr_weights: Optional[str]
    table_row: str
    counterfactual: Optional[Literal["ips", "dr"]] = None

    def __post_init__(self):
        if (self.cvr_weights is not None) != (self.loss == "cvr"):
            raise ValueError(f"{self}: a cvr loss needs cvr_weights, a ctcvr loss takes none")
        if self.counterfactual is not None and not self.ctcvr_from_towers:
            raise ValueError(f"{self}: a counterfactual regulariser needs ESMM's towers (a cvr head, a ctcvr loss)")

    @property
    def loss_parts(self) -> tuple[str, ...]:
        """The keys of ``esmm_model.losses.variant_loss``'s result: the total, then its parts."""
        counterfactual = {None: (), "ips": ("counterfactual_loss",),
                          "dr": ("counterfactual_loss", "imputation_loss")}[self.counterfactual]
        return ("loss", "ctr_loss", f"{self.loss}_loss", *counterfactual)

    @property
    def ctcvr_from_towers(self) -> bool:
        """True when the loss fits pCTR · pCVR to the CTCVR label, so pCTR comes from the variant itself."""
        return self.loss == "ctcvr" and self.second_head == "cvr"


# esmm: one set of tables, pCTCVR = pCTR · pCVR fitted over all impressions; esmm_ns: the same, a set of
# tables per tower. The competitors train an independent CTR network beside a second network with its own
# tables: division fits pCTCVR directly; base, aman, oversampling and unbias fit pCVR on clicked impressions,
# weighted as esmm_model.losses.CVR_WEIGHTS says. escm2_ips and escm2_dr are ESMM plus ESCM²'s counterfactual
# regulariser (esmm_model.losses.counterfactual_loss).
VARIANTS: dict[str, VariantSpec] = {  # in the order of the paper's Table 2
    "base": VariantSpec("cvr", shared_tables=False, loss="cvr", cvr_weights="clicked", table_row="BASE"),
    "aman": VariantSpec("cvr", shared_tables=False, loss="cvr", cvr_weights="clicked_and_sampled_negatives",
                        table_row="AMAN"),
    "oversampling": VariantSpec("cvr", shared_tables=False, loss="cvr", cvr_weights="clicked_conversions_k_times",
                                table_row="OVERSAMPLING"),
    "unbias": VariantSpec("cvr", shared_tables=False, loss="cvr", cvr_weights="clicked_inverse_ctr",
                          table_row="UNBIAS"),
    "division": VariantSpec("ctcvr", shared_tables=False, loss="ctcvr", cvr_weights=None, table_row="DIVISION"),
    "esmm_ns": VariantSpec("cvr", shared_tables=False, loss="ctcvr", cvr_weights=None, table_row="ESMM-NS"),
    "esmm": VariantSpec("cvr", shared_tables=True, loss="ctcvr", cvr_weights=None, table_row="ESMM"),
    "escm2_ips": VariantSpec("cvr", shared_tables=True, loss="ctcvr", cvr_weights=None, table_row="ESCM2-IPS",
                             counterfactual="ips"),
    "escm2_dr": VariantSpec("cvr", shared_tables=True, loss="ctcvr", cvr_weights=None, table_row="ESCM2-DR",
                            counterfactual="dr"),
}
