"""The `esmm` command line: one subcommand per pipeline step, plus the demo.

Each subcommand parses flags, loads the config, and calls the step's plain function.
A user mistake (EsmmError) prints one line and exits 2; no traceback. `esmm push` exits
NOT_PUSHED (3) when it validated the model but did not push it. Every command is quiet (the
project's own lines only) unless ``-v``/``--verbose``; ``components.console`` sets that up before
TensorFlow, absl or Beam load.
"""
from __future__ import annotations

import argparse
import os
import sys

from components import console
from esmm_model.errors import EsmmError
from esmm_model.variants import VARIANTS
from pipelines import cluster

NOT_PUSHED = 3
DEFAULT_CONFIG = "simulator"
VERBOSE_HELP = ("show every library's log lines (TensorFlow, absl, Beam workers, kfp.local's task output); "
                "by default only the project's own lines show, and `esmm run` keeps each step's output in a log "
                "file in the run directory")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="a shipped config name (simulator, aliccp, seed_layout) or a YAML path or gs:// URI "
                             "(default: %(default)s)")


def _add_beam(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runner",
                        help="Beam runner, overriding the config's beam.runner (e.g. DirectRunner, FlinkRunner, "
                             "DataflowRunner)")
    parser.add_argument("--beam-option", action="append", default=[], metavar="OPTION",
                        help="extra Beam pipeline option, repeatable, passed through untouched (e.g. "
                             "--beam-option=--direct_num_workers=2)")


def beam_args(config, args: argparse.Namespace) -> list[str]:
    """The config's Beam runner and options, with the command line's on top (``components.beam.runner.beam_args``)."""
    from components.beam.runner import beam_args as resolve

    return resolve(config.beam, args.runner, args.beam_option)


def _cmd_simulate(args: argparse.Namespace) -> None:
    from components.devtools.simulator import SimulationSpec, simulate
    from pipelines.config import load_config

    config = load_config(args.config)
    spec = SimulationSpec.for_preset(args.preset, args.size, rows=args.rows, users=args.users, items=args.items,
                                     ctr=args.ctr, cvr=args.cvr, seed=args.seed)
    summary = simulate(spec, config, args.out, write_csv=args.csv)
    print(summary.describe())


def _add_max_rejected(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-rejected-fraction", type=float, metavar="F",
                        help="fail ingestion when more than this share of impression lines is rejected "
                             "(default: the config's input.max_rejected_fraction, 0.01 unless set)")


def _ingest_config(args: argparse.Namespace):
    """The config, with --max-rejected-fraction on top when given."""
    from esmm_model.config import with_overrides
    from pipelines.config import load_config

    config = load_config(args.config)
    if args.max_rejected_fraction is None:
        return config
    return with_overrides(config, {"input": {"max_rejected_fraction": args.max_rejected_fraction}})


def _cmd_ingest(args: argparse.Namespace) -> None:
    from components.ingest.executor import ingest

    config = _ingest_config(args)
    counts = ingest(config, args.input, args.out, beam_args(config, args))
    print(counts.describe())


def _cmd_transform(args: argparse.Namespace) -> None:
    from components.transform.executor import transform
    from pipelines.config import load_config

    config = load_config(args.config)
    outputs = transform(config, args.ingest_dir, args.out, beam_args(config, args))
    print(f"transform graph: {outputs.graph}\ntransformed examples: {outputs.transformed}")


def _cmd_train(args: argparse.Namespace) -> None:
    from components.train.distribution import serve_if_not_coordinator
    from components.train.executor import train
    from pipelines.config import load_config

    config = load_config(args.config)
    if serve_if_not_coordinator(config.training):
        return
    result = train(config, args.transform_dir, args.out, checkpoint_dir=args.checkpoint_dir,
                   checkpoint_every=args.checkpoint_every)
    where = f"exported {result.export_dir}" if result.export_dir else "worker done (the chief exports)"
    print(f"{where} after {result.step} steps; final eval: {result.metrics['final']}")


def _cmd_push(args: argparse.Namespace) -> int:
    from components.push.executor import push
    from esmm_model.contracts import layout
    from esmm_model.contracts.blessing import read_blessing, read_json
    from esmm_model.contracts.warmup import BATCH_SIZES, read_examples
    from pipelines.config import load_config

    config = load_config(args.config)
    evaluation = layout.EvaluationLayout(args.evaluation)
    blessing = read_blessing(evaluation.blessing)
    metrics = read_json(evaluation.metrics, "metrics")
    warmup = (read_examples(layout.IngestLayout(args.ingest_dir).split_pattern(layout.EVAL), max(BATCH_SIZES))
              if args.ingest_dir and blessing.blessed else ())
    result = push(args.model_dir, blessing, args.serving_base, config.push.model_name, config.push.keep_versions,
                  metrics, warmup, model_config_file=config.push.model_config_file)
    print(blessing.describe())
    print(result.describe())
    return 0 if result.pushed else NOT_PUSHED


def _cmd_serve(args: argparse.Namespace) -> None:
    import atexit
    import gc
    import logging
    import signal
    import threading

    from esmm_model.contracts import layout
    from pipelines.config import load_config
    from serving_client.server import ModelServer

    atexit.register(gc.freeze)  # collecting TensorFlow's objects at exit took 7 s of a SIGTERM's drain; frozen, 0.5 s
    model_name = args.model_name or load_config(args.config).push.model_name
    model_base = layout.model_base(args.serving_base, model_name) if args.serving_base else None
    serving_log = logging.getLogger("serving_client")  # version loads, swaps and unloads, at INFO, on stderr
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    serving_log.addHandler(handler)
    serving_log.setLevel(logging.INFO)
    try:
        server = ModelServer(model_base, model_name, model_config_file=args.model_config_file, host=args.host,
                             port=args.port, poll_interval_s=args.poll_interval, max_workers=args.workers,
                             max_batch_size=args.max_batch_size or None)
        port = server.start()
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop).start())  # drain, as on K8s
        labels = ", ".join(f"{label}={version}" for label, version in sorted(server.versions.labels.items()))
        print(f"serving {model_name} from {server.versions.model_dir} on {args.host}:{port}"
              f"{f' (labels {labels})' if labels else ''} (Ctrl-C stops)", flush=True)
        try:
            server.wait()
        finally:
            server.stop()
    finally:
        serving_log.removeHandler(handler)


def _cmd_predict(args: argparse.Namespace) -> None:
    from pipelines.config import load_config
    from serving_client.score_file import predict_command

    config = load_config(args.config)
    print(predict_command(config, args.target, args.model_name or config.push.model_name, args.candidates,
                          shared_path=args.shared, version=args.version, version_label=args.version_label,
                          timeout_s=args.timeout, fallback=args.fallback))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from components.evaluate.executor import evaluate
    from esmm_model.config import with_overrides
    from esmm_model.contracts import layout
    from pipelines.config import load_config

    config = load_config(args.config)
    if args.thresholds:
        config = with_overrides(config, {"evaluation": {"thresholds": _thresholds(args.thresholds)}})
    result = evaluate(config, args.model_dir, args.ingest_dir, args.out, beam_args(config, args),
                      serving_base=args.serving_base, ground_truth=args.ground_truth)
    print(result.table())
    print(result.blessing.describe())
    print(f"report: {layout.EvaluationLayout(args.out).report_html}")


def _thresholds(text: str | None) -> list[dict] | None:
    import json

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise EsmmError(f"--thresholds is not valid JSON: {exc}") from None
    if not isinstance(value, list):
        raise EsmmError("--thresholds must be a JSON list like [{\"metric\": \"cvr/clicked/auc\", \"min\": 0.6}]")
    return value


def _cmd_run(args: argparse.Namespace) -> None:
    from pipelines.local_run import run_local

    _ingest_config(args)  # a bad config or override fails here, in one line, before kfp.local starts
    run = run_local(args.config, args.input, args.serving_base, args.out, beam_runner=args.runner,
                    beam_options=args.beam_option or None, variant=args.variant, epochs=args.epochs,
                    thresholds=_thresholds(args.thresholds), ground_truth=args.ground_truth,
                    max_rejected_fraction=args.max_rejected_fraction)
    print(run.describe(slices=False))  # the per-slice table is in the report


def _cmd_compile(args: argparse.Namespace) -> None:
    from pipelines.compile import compile_pipeline
    from pipelines.config import load_config

    path = compile_pipeline(args.out, args.image, load_config(args.config), model_store_pvc=args.model_store_pvc,
                            work_pvc=args.work_pvc or None)
    print(f"wrote {path} (steps run in {args.image}; model store PVC {args.model_store_pvc} on evaluate and push, "
          f"{f'work PVC {args.work_pvc} on train' if args.work_pvc else 'no work PVC'})")


def _cmd_submit(args: argparse.Namespace) -> int:
    import json

    from pipelines.compile import Submission, kfp_cron, submit, watch

    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as exc:
        raise EsmmError(f"--arguments is not valid JSON: {exc}") from None
    if not isinstance(arguments, dict):
        raise EsmmError("--arguments must be a JSON object like "
                        "{\"config_path\": \"simulator\", \"input_path\": \"gs://...\"}")
    if not os.path.isfile(args.package):  # kfp.Client reads the package from the local disk
        raise EsmmError(f"--package {args.package!r} does not exist; write it with `esmm compile`")
    request = Submission(host=args.host, package=args.package, arguments=arguments, experiment=args.experiment,
                         run_name=args.run_name, namespace=args.namespace, service_account=args.service_account,
                         pipeline_root=args.pipeline_root, enable_caching=False if args.no_cache else None,
                         schedule=kfp_cron(args.schedule) if args.schedule else None, token_file=args.token_file,
                         cookies_file=args.cookies_file, ca_bundle=args.ca_bundle)
    if args.watch and request.schedule:
        raise EsmmError("--watch follows a single run; a recurring run (--schedule) starts its runs later")
    note = request.check_schedule_macros()
    if note:
        print(note, file=sys.stderr)
    if args.dry_run:
        print(request.describe())
        return 0
    submitted = submit(request)
    print(f"created {submitted.description} on {args.host}", flush=True)
    if args.watch:
        state = watch(submitted, args.host)
        return 0 if state == "SUCCEEDED" else 1
    return 0


def _names(text: str, what: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise EsmmError(f"{what}: give a comma-separated list")
    return names


def _fractions(text: str) -> tuple[float, ...]:
    try:
        fractions = tuple(float(part) for part in _names(text, "--fractions"))
    except ValueError:
        raise EsmmError(f"--fractions: expected numbers like 0.1,0.25,0.5,1, got {text!r}") from None
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise EsmmError(f"--fractions: {bad[0]} is not a sampling rate in (0, 1]")
    return fractions


def _cmd_experiment(args: argparse.Namespace) -> None:
    from components.devtools.experiment import load_data, read_runs, run_experiment, table2_markdown, write_outputs
    from esmm_model.config import with_overrides
    from pipelines.config import load_config

    rows, sweep_rows = _names(args.variants, "--variants"), _names(args.sweep_variants, "--sweep-variants")
    fractions = _fractions(args.fractions)
    if args.from_runs:
        result = read_runs(args.from_runs)
        paths = write_outputs(result, args.out, rows, sweep_rows, fractions)
        print(table2_markdown(result, rows))
        print("wrote " + ", ".join(paths.values()))
        return
    if not (args.transform_dir and args.ingest_dir):
        raise EsmmError("--transform-dir and --ingest-dir are required unless --from-runs is given")
    config = load_config(args.config)
    if args.epochs:
        config = with_overrides(config, {"training": {"epochs": args.epochs}})
    if args.repeats < 1:
        raise EsmmError(f"--repeats: give at least 1, got {args.repeats}")
    data = load_data(config, args.transform_dir, args.ingest_dir, args.ground_truth)
    print(f"experiment: {len(data.train):,} train / {len(data.eval):,} eval rows, {args.repeats} repeats, "
          f"{config.training.epochs} epochs", flush=True)
    result = run_experiment(data, repeats=args.repeats, rows=rows, fractions=fractions, sweep_rows=sweep_rows,
                            seed=args.seed, progress=lambda line: print(line, flush=True))
    paths = write_outputs(result, args.out, rows, sweep_rows, fractions)
    print(table2_markdown(result, rows))
    print("wrote " + ", ".join(paths.values()))


def _cmd_demo(args: argparse.Namespace) -> None:
    from pipelines.demo import run_demo

    run_demo(args.out, config_path=args.config, rows=args.rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esmm", description="ESMM pipeline: simulate, ingest, transform, train, evaluate, push, serve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate",
                       help="write a click->conversion impression log with known ground truth (Ali-CCP raw format)")
    _add_config(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--preset", default="baseline",
                   help="the generative story: baseline, clickbait, long_tail or position (docs/simulator.md; "
                        "default: %(default)s)")
    p.add_argument("--size", default="1m",
                   help="the story's sizes: small (tests) or 1m (1M rows, benchmarks; default: %(default)s)")
    p.add_argument("--rows", type=int, help="impressions (default: the size's)")
    p.add_argument("--users", type=int, help="users (default: the size's)")
    p.add_argument("--items", type=int, help="items (default: the size's)")
    p.add_argument("--ctr", type=float, help="target mean p_click (default: 0.04)")
    p.add_argument("--cvr", type=float, help="target mean p_cvr on clicks (default: 0.05; Ali-CCP's is about 0.005)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--csv", action="store_true",
                   help="also write impressions.csv (header, weighted lists as id:weight|id:weight)")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("ingest",
                       help="raw logs -> tf.Example TFRecords split by time, schema, counts, rejected rows (Beam)")
    _add_config(p)
    _add_beam(p)
    p.add_argument("--input", required=True,
                   help="Ali-CCP: a directory with sample_skeleton_*.csv and common_features_*.csv; "
                        "csv: a file pattern")
    p.add_argument("--out", required=True, help="output directory (must be missing or empty)")
    _add_max_rejected(p)
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("transform",
                       help="tf.Transform on Beam: analyze train, transform train and eval, write the transform graph")
    _add_config(p)
    _add_beam(p)
    p.add_argument("--ingest-dir", required=True, help="output of `esmm ingest` (train/ and eval/ TFRecords)")
    p.add_argument("--out", required=True, help="output directory (transform_graph/ and transformed/)")
    p.set_defaults(func=_cmd_transform)

    p = sub.add_parser("train",
                       help="train the configured ESMM variant on transformed data and export a SavedModel "
                            "for TF Serving")
    _add_config(p)
    p.add_argument("--transform-dir", required=True, help="output of `esmm transform`")
    p.add_argument("--out", required=True,
                   help="output directory (checkpoints/, tensorboard/, metrics.json, model/<version>/); "
                        "rerun to resume")
    p.add_argument("--checkpoint-dir",
                   help="keep checkpoints here instead of <out>/checkpoints (a durable volume or URI); "
                                            "a rerun with the same directory resumes")
    p.add_argument("--checkpoint-every", type=int, default=500, metavar="STEPS",
                   help="back up every STEPS training steps, besides every epoch's end (default: %(default)s)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("push", help="push the model atomically if `esmm evaluate` blessed it against the version still "
                                    f"served (exit {NOT_PUSHED} when not pushed)")
    _add_config(p)
    p.add_argument("--model-dir", required=True, help="the SavedModel export directory (holds saved_model.pb)")
    p.add_argument("--evaluation", required=True,
                   help="the output of `esmm evaluate` for this model (blessing.json, metrics.json)")
    p.add_argument("--serving-base", required=True, help="TF Serving's base path (local, mounted volume or gs:// URI); "
                                                         "the model goes to "
                                                         "<serving-base>/<push.model_name>/<version>/")
    p.add_argument("--ingest-dir", help="output of `esmm ingest`: its eval examples become the version's TF Serving "
                                        "warmup requests (assets.extra/tf_serving_warmup_requests)")
    p.set_defaults(func=_cmd_push)

    p = sub.add_parser("serve",
                       help="local TF-Serving-compatible gRPC server for <serving-base>/<model>/<version> "
                            "(development)")
    _add_config(p)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--serving-base", help="base path the pusher writes to; serves its latest integer version")
    where.add_argument("--model-config-file", help="TF Serving's model config (ModelServerConfig text proto) with "
                                                   "base_path, version policy and version labels, re-read every poll")
    p.add_argument("--model-name", help="model to serve (default: the config's push.model_name)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8500,
                   help="gRPC port, 0 for any free one (default: %(default)s, as TF Serving)")
    p.add_argument("--poll-interval", type=float, default=1.0,
                   help="seconds between checks for a new version (default: %(default)s)")
    p.add_argument("--workers", type=int, default=8, help="request threads (default: %(default)s)")
    p.add_argument("--max-batch-size", type=int, default=512,
                   help="examples per request, past which INVALID_ARGUMENT, as the shipped TF Serving batching "
                        "config (default: %(default)s; 0 for no limit, as TF Serving without --enable_batching)")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("predict",
                       help="score candidates from JSONL or CSV on TF Serving (or esmm serve) and print them ranked")
    _add_config(p)
    p.add_argument("--candidates", required=True,
                   help="a .jsonl or .csv file, one candidate per line, optional sim_score column")
    p.add_argument("--shared", help="a JSON object of the user and context features shared by all candidates")
    p.add_argument("--target", default="127.0.0.1:8500",
                   help="gRPC host:port of the model server (default: %(default)s)")
    p.add_argument("--model-name", help="served model name (default: the config's push.model_name)")
    pinned = p.add_mutually_exclusive_group()
    pinned.add_argument("--version", type=int, help="pin a model version (default: the latest)")
    pinned.add_argument("--version-label",
                        help="ask for the version a label names in the server's model config (stable, canary)")
    p.add_argument("--timeout", type=float, default=2.0,
                   help="deadline of the whole call in seconds, retries and chunks included (default: %(default)s)")
    p.add_argument("--fallback", action="store_true", help="print 0.0 scores instead of failing when serving is down")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate",
                       help="TFMA on the raw eval split, sliced all/clicked/unclicked, with report and plots")
    _add_config(p)
    _add_beam(p)
    p.add_argument("--model-dir", required=True, help="the exported SavedModel directory (holds saved_model.pb)")
    p.add_argument("--ingest-dir", required=True, help="output of `esmm ingest` (its eval/ split is evaluated)")
    p.add_argument("--ground-truth", help="the simulator's ground_truth.csv, for entire-space and oracle AUCs")
    p.add_argument("--serving-base", help="TF Serving's base path: its latest <push.model_name> version is re-scored "
                                          "on the same rows as the baseline of the gate")
    p.add_argument("--thresholds", help="override evaluation.thresholds, as a JSON list")
    p.add_argument("--out", required=True,
                   help="output directory (metrics.json, blessing.json, report.md/html, plots/, tfma/)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("run",
                       help="run the whole pipeline locally under kfp.local (DirectRunner), as it runs on Kubernetes")
    _add_config(p)
    _add_beam(p)
    p.add_argument("--input", required=True, help="raw input, as for `esmm ingest`")
    p.add_argument("--serving-base", required=True, help="where blessed models are pushed (<base>/<model>/<version>)")
    p.add_argument("--out", required=True, help="directory for the kfp pipeline root and cache")
    p.add_argument("--variant", help="override model.variant")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--thresholds", help="override evaluation.thresholds, as a JSON list")
    p.add_argument("--ground-truth", help="the simulator's ground_truth.csv, for entire-space and oracle AUCs")
    _add_max_rejected(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("compile", help="compile the pipeline to KFP YAML for Kubernetes (resources, retries, volumes)")
    _add_config(p)
    p.add_argument("--image", required=True, help="container image the steps run in (the project installed)")
    p.add_argument("--out", default="esmm_pipeline.yaml", help="YAML path (default: %(default)s)")
    p.add_argument("--model-store-pvc", default=cluster.MODEL_STORE_PVC,
                   help=f"PVC TF Serving reads, mounted on evaluate and push at {cluster.MODEL_STORE_MOUNT}: the "
                        f"default of the pipeline parameter model_store_pvc (default: %(default)s)")
    p.add_argument("--work-pvc", default=cluster.WORK_PVC,
                   help=f"PVC for checkpoints, mounted on train at {cluster.WORK_MOUNT}: the default of the pipeline "
                        f"parameter work_pvc; '' for none (then pass work_root=gs://... or keep checkpoints in the "
                        f"model artifact) (default: %(default)s)")
    p.set_defaults(func=_cmd_compile)

    p = sub.add_parser("submit", help="start a run of a compiled pipeline on a KFP endpoint, or schedule one")
    p.add_argument("--package", required=True, help="the YAML from `esmm compile`")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow")
    p.add_argument("--arguments", default="{}",
                   help="pipeline arguments as JSON (config_path, input_path, serving_base, ...)")
    p.add_argument("--experiment", help="KFP experiment name (default: KFP's Default)")
    p.add_argument("--run-name", help="run name, or the recurring run's name with --schedule")
    p.add_argument("--namespace", help="Kubernetes namespace of a multi-user KFP (default: the client's)")
    p.add_argument("--service-account", default=cluster.SERVICE_ACCOUNT,
                   help="service account the step pods run as (default: %(default)s, created by k8s/)")
    p.add_argument("--pipeline-root",
                   help="where artifacts go (a gs:// or minio:// URI; default: the KFP deployment's)")
    p.add_argument("--no-cache", action="store_true", help="run every step, ignoring KFP's cache")
    p.add_argument("--schedule", metavar="CRON", help="create a recurring run instead, e.g. '0 3 * * *' (KFP's 6-field "
                                                      "cron with seconds is accepted too)")
    p.add_argument("--token-file", help="a file holding a bearer token for the endpoint (an OIDC id token, "
                                        "`kubectl create token ...`)")
    p.add_argument("--cookies-file", help="a file holding a Cookie header value (e.g. an oauth2-proxy or Dex "
                                          "session cookie)")
    p.add_argument("--ca-bundle", help="PEM file of the CA certificates that sign the endpoint's TLS certificate")
    p.add_argument("--watch", action="store_true",
                   help="follow the run to its end; exit 1 unless it succeeds")
    p.add_argument("--dry-run", action="store_true", help="print the request and send nothing")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("experiment", help="the paper's comparison: every variant x N seeds on one dataset, mean ± std "
                                          "of four AUCs (Table 2), and a training-sparsity sweep (Figure 3)")
    _add_config(p)
    p.add_argument("--transform-dir", help="output of `esmm transform`")
    p.add_argument("--ingest-dir", help="output of `esmm ingest` (its eval/ split is scored)")
    p.add_argument("--ground-truth",
                   help="the simulator's ground_truth.csv, for entire-space CVR AUC and the oracle row")
    p.add_argument("--out", required=True, help="output directory (table2.md/.csv/.png, runs.csv, sparsity.md/.png)")
    p.add_argument("--repeats", type=int, default=5, help="seeds per variant (default: %(default)s; the paper used 10)")
    p.add_argument("--variants", default=",".join(spec.table_row for spec in VARIANTS.values()),
                   help="Table 2 rows (default: all of them, %(default)s)")
    p.add_argument("--fractions", default="0.1,0.25,0.5,1", help="training sampling rates of the sparsity sweep "
                                                                 "(default: %(default)s; 1 alone skips it)")
    p.add_argument("--sweep-variants", default="BASE,ESMM-NS,ESMM", help="variants of the sweep (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="override training.epochs")
    p.add_argument("--seed", type=int, help="seed of the first repeat (default: training.seed); repeat i uses seed + i")
    p.add_argument("--from-runs", nargs="+", metavar="RUNS_CSV",
                   help="train nothing: write the tables and charts from the runs.csv of earlier experiments "
                        "(e.g. seeds or variants run in parallel)")
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("demo", help="run the main job end to end on the embedded simulator default")
    _add_config(p)
    p.add_argument("--out", default="demo_out", help="output directory (default: %(default)s)")
    p.add_argument("--rows", type=int, default=200_000, help="simulated impressions (default: %(default)s)")
    p.set_defaults(func=_cmd_demo)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with console.quiet(args.verbose):  # before TensorFlow, absl or Beam load, here or in a child process
            status = args.func(args)
    except EsmmError as exc:
        print(f"esmm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"esmm {args.command}: interrupted", file=sys.stderr)
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
