"""components.console and pipelines.task_logs: what a quiet run shows, and where the rest goes."""
import contextlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions
from kfp.local import logging_utils

from components import console
from components.beam.runner import worker_options
from pipelines.task_logs import TaskLogs

ROOT = Path(__file__).resolve().parents[1]
# Lines TensorFlow 2.21 and its GPU probe wrote on this machine, and a TSL line in the older dated format.
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796409833.088126   23512 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1796409833.105267   23512 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "E0000 00:00:1796409906.524313   23512 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "W0000 00:00:1796409906.524313   23512 some_op.cc:9] a warning",
    "2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/cudart_stub.cc:32] Could not find cuda drivers",
]
KEPT = [
    "E0000 00:00:1796409906.524313   23512 saved_model.cc:52] could not read the model",
    "F0000 00:00:1796409906.524313   23512 check.cc:1] Check failed: x",
    "esmm ingest: error: rejected 2.75% of 2,000 rows (55)",
    "Traceback (most recent call last):",
]


def test_native_noise_is_info_warning_and_the_gpu_probe():
    assert [line for line in NOISE if not console.is_native_noise(line.encode())] == []
    assert [line for line in KEPT if console.is_native_noise(line.encode())] == []


def test_a_quiet_process_drops_native_noise_of_itself_and_its_children():
    script = (
        "import os, subprocess, sys\n"
        "from components import console\n"
        "with console.quiet(False):\n"
        f"    os.write(2, {chr(10).join(NOISE + KEPT[:1]).encode() + chr(10).encode()!r})\n"
        "    subprocess.run([sys.executable, '-c', 'import os; os.write(2, b\"I0000 00:00:1.2 7 a.cc:1] child\\\\n"
        "child line\\\\n\"); print(os.environ[\"ESMM_VERBOSE\"])'], check=True)\n"
        "    print('python line', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stderr.splitlines()) == sorted([KEPT[0], "child line", "python line"])
    assert done.stdout == "0\n"


def test_a_script_quiet_for_its_whole_process_drops_tensorflows_start_up_lines_and_keeps_its_own():
    # What a benchmark does at its top, before importing TensorFlow at module level; ESMM_VERBOSE=1 lets all through.
    script = ("from components import console\n"
              "console.quiet_process()\n"
              "console.quiet_process()\n"
              "import sys, tensorflow as tf\n"
              "tf.constant(1) + 1\n"
              "print('own line', file=sys.stderr)\n")
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env={**os.environ, console.VERBOSE_ENV: "0"})
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.splitlines() == ["own line"]
    loud = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, console.VERBOSE_ENV: "1"})
    assert loud.returncode == 0, loud.stderr
    assert [line for line in loud.stderr.splitlines() if console.is_native_noise(line.encode())]


def test_workers_get_the_options_the_run_set_and_the_quiet_log_level(monkeypatch, caplog):
    options = PipelineOptions(["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                               "--direct_num_workers=2"])
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    assert worker_options(options) == {"runner": "DirectRunner", "direct_running_mode": "multi_processing",
                                       "direct_num_workers": 2, "default_sdk_harness_log_level": "ERROR"}
    # Rebuilt as a worker does (sdk_worker_main), nothing is left to discard; every default would leave two.
    with caplog.at_level(logging.WARNING, logger="apache_beam.options.pipeline_options"):
        PipelineOptions.from_dictionary(worker_options(options)).get_all_options()
        assert "Discarding" not in caplog.text
        PipelineOptions.from_dictionary(options.get_all_options()).get_all_options()
        assert "Discarding unparseable args" in caplog.text and "--pipeline_type_check" in caplog.text
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert "default_sdk_harness_log_level" not in worker_options(options)
    chosen = PipelineOptions(["--default_sdk_harness_log_level=DEBUG"])
    assert worker_options(chosen)["default_sdk_harness_log_level"] == "DEBUG"


def test_say_marks_lines_only_inside_a_local_task(monkeypatch, capsys):
    monkeypatch.delenv(console.STEP_CONSOLE_ENV, raising=False)
    console.say("train: epoch 1")
    monkeypatch.setenv(console.STEP_CONSOLE_ENV, "1")
    console.say("train: epoch 2")
    assert capsys.readouterr().out.splitlines() == ["train: epoch 1", console.CONSOLE_MARK + "train: epoch 2"]


def kfp_output(task: str, lines: list[str], status: str = "SUCCESS") -> str:
    """What kfp.local 2.17 prints for one task: its log lines (coloured) around the task's indented output."""
    level = "INFO" if status == "SUCCESS" else "ERROR"
    return "".join([f"12:00:00.000 - INFO - Executing task \x1b[96m'{task}'\x1b[0m\n",
                    "12:00:00.001 - INFO - Streamed logs:\n\n",
                    *(f"    {line}\n" for line in lines),
                    f"12:00:01.000 - {level} - Task \x1b[96m'{task}'\x1b[0m finished with status "
                    f"\x1b[92m{status}\x1b[0m\n", "-" * 20 + "\n"])


def test_task_output_goes_to_a_log_per_task_and_the_console_gets_starts_ends_and_marked_lines(tmp_path):
    console_out = tmp_path / "console.txt"
    dump = '[KFP Executor 12:00:00 INFO]: Got executor_input: {"config": "..."}'

    def kfp_prints(logs: TaskLogs) -> None:  # as kfp.local does: sys.stdout redirected, builtins.print indenting
        with contextlib.redirect_stdout(logs), logging_utils.indented_print():
            print("12:00:00.000 - INFO - Running pipeline: \x1b[95m'esmm'\x1b[0m")
            (tmp_path / "root" / "esmm-2026").mkdir(parents=True)
            print(kfp_output("ingest-step", [dump, console.CONSOLE_MARK + "ingest: 10 of 10 rows in 1.0 s"]), end="")
            print(kfp_output("train-step", ["Traceback (most recent call last):",
                                            "components.ingest.executor.RejectionError: rejected 2.75% of 2,000"],
                             status="FAILURE"), end="")

    with open(console_out, "w") as out:
        logs = TaskLogs(tmp_path / "root", set(), out)
        printing = threading.Thread(target=kfp_prints, args=(logs,), daemon=True)
        printing.start()
        printing.join(30)
        assert not printing.is_alive(), "TaskLogs deadlocked under kfp.local's print"
        logs.close()
    run = tmp_path / "root" / "esmm-2026"
    assert console_out.read_text().splitlines() == [
        "ingest-step: started", "ingest: 10 of 10 rows in 1.0 s", "ingest-step: done in 0.0 s",
        "train-step: started", "train-step: FAILURE after 0.0 s"]
    ingest_log = (run / "ingest-step.log").read_text()
    assert dump in ingest_log and "\x1b" not in ingest_log
    assert "Running pipeline: 'esmm'" in (run / "kfp.log").read_text()
    assert set(logs.seconds) == {"ingest-step", "train-step"}
    assert logs.failure == (f"train-step failed: RejectionError: rejected 2.75% of 2,000; "
                            f"its log: {run / 'train-step.log'}")


def test_verbose_goes_before_or_after_the_command():
    from pipelines.cli import build_parser

    parser = build_parser()
    assert [parser.parse_args(argv).verbose for argv in (["-v", "compile", "--image", "x"],
                                                         ["compile", "--image", "x", "--verbose"],
                                                         ["compile", "--image", "x"])] == [True, True, False]
