"""The one ESMM pipeline: ingest -> transform -> train -> evaluate -> push.

``create_pipeline(image)`` returns the kfp pipeline function. kfp.local runs it as written
(``pipelines.local_run``); the compiler turns the same function into YAML for Kubernetes
(``pipelines.compile``). The pipeline never knows where it runs.
"""

from typing import Optional

from kfp import dsl

from pipelines.steps import build_steps

DEFAULT_IMAGE = "ghcr.io/esmm-pipeline/esmm:0.1.0"
DEFAULT_BEAM_ARGS = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def create_pipeline(image: str = DEFAULT_IMAGE):
    """The pipeline function, its steps running in ``image``."""
    steps = build_steps(image)

    @dsl.pipeline(name="esmm", description="ESMM: Beam ingestion, tf.Transform, Keras trainer, TFMA evaluation, TF Serving push")
    def esmm_pipeline(config_path: str, input_path: str, serving_base: str, beam_args: list = DEFAULT_BEAM_ARGS,
                      variant: str = "", epochs: int = 0, thresholds: list = [], ground_truth: str = "",
                      max_rejected_fraction: Optional[float] = None):
        # Raw impression logs -> raw tf.Example split by time (Beam); fails past max_rejected_fraction
        # (None: the config's input.max_rejected_fraction), so nothing trains on a log the config does not fit.
        ingest = steps.ingest(config_path=config_path, input_path=input_path, beam_args=beam_args,
                              max_rejected_fraction=max_rejected_fraction)
        # Hash, vocabulary, z-score and buckets, analyzed on train only (tf.Transform on Beam).
        transform = steps.transform(config_path=config_path, beam_args=beam_args, examples=ingest.outputs["examples"])
        # The ESMM variant, exported with the transform graph inside serving_default.
        train = steps.train(config_path=config_path, variant=variant, epochs=epochs,
                            transformed=transform.outputs["transformed"])
        # TFMA on the raw eval split, sliced all / clicked / unclicked, plus entire-space metrics.
        evaluate = steps.evaluate(config_path=config_path, beam_args=beam_args, ground_truth=ground_truth,
                                  examples=ingest.outputs["examples"], model=train.outputs["model"])
        # Blessing against thresholds and the serving model; atomic push, with warmup requests, only if blessed.
        push = steps.push(config_path=config_path, serving_base=serving_base, thresholds=thresholds,
                          examples=ingest.outputs["examples"], model=train.outputs["model"],
                          evaluation=evaluate.outputs["evaluation"])
        push.set_caching_options(False)  # it reads and writes the serving directory: never replayed from cache

    return esmm_pipeline
