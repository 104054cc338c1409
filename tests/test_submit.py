"""`esmm submit`: the request it sends (stubbed kfp.Client), schedules, dry runs, and one-line failures."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pipelines import compile as compile_module
from pipelines.cli import main
from pipelines.compile import SCHEDULED_DATE, Submission, Submitted, kfp_cron, submit, watch


class StubClient:
    """Records what the CLI asks of kfp.Client."""

    calls: list[tuple[str, dict]] = []
    states: list[str] = []

    def __init__(self, host, namespace, **credentials):
        self.calls.append(("client", {"host": host, "namespace": namespace,
                                      **{k: v for k, v in credentials.items() if v is not None}}))

    def get_run(self, run_id):
        state = self.states.pop(0)
        self.calls.append(("get_run", {"run_id": run_id, "state": state}))
        error = SimpleNamespace(message="task train-step failed: OOMKilled") if state == "FAILED" else None
        return SimpleNamespace(run_id=run_id, state=state, error=error)

    def create_run_from_pipeline_package(self, package, **kwargs):
        self.calls.append(("run", {"package": package, **kwargs}))
        return SimpleNamespace(run_id="run-123")

    def create_experiment(self, name, namespace=None):
        self.calls.append(("experiment", {"name": name, "namespace": namespace}))
        return SimpleNamespace(experiment_id="exp-9")

    def create_recurring_run(self, experiment_id, **kwargs):
        self.calls.append(("recurring", {"experiment_id": experiment_id, **kwargs}))
        return SimpleNamespace(recurring_run_id="rec-7")


@pytest.fixture
def package(tmp_path):
    path = tmp_path / "esmm.yaml"
    path.write_text("# compiled pipeline\n")
    return str(path)


@pytest.fixture
def stub(monkeypatch):
    StubClient.calls, StubClient.states = [], []
    monkeypatch.setattr(compile_module, "_client", StubClient)
    monkeypatch.setattr(compile_module.time, "sleep", lambda s: None)
    return StubClient.calls


ARGS = {"config_path": "simulator", "input_path": "gs://bucket/logs/2026-11-27"}
SCHEDULED = {"config_path": "simulator", "input_path": f"gs://bucket/logs/{SCHEDULED_DATE}"}


def test_submit_sends_every_flag_to_kfp(package, stub, capsys):
    code = main(["submit", "--package", package, "--host", "http://kfp.example", "--arguments", json.dumps(ARGS),
                 "--namespace", "ranking-ml", "--service-account", "runner", "--experiment", "esmm-daily",
                 "--run-name", "esmm-2026-11-27", "--pipeline-root", "gs://bucket/root", "--no-cache"])
    assert code == 0
    assert stub == [("client", {"host": "http://kfp.example", "namespace": "ranking-ml"}),
                    ("run", {"package": package, "arguments": ARGS, "run_name": "esmm-2026-11-27",
                             "experiment_name": "esmm-daily", "namespace": "ranking-ml",
                             "pipeline_root": "gs://bucket/root", "enable_caching": False,
                             "service_account": "runner"})]
    assert "created run run-123 on http://kfp.example" in capsys.readouterr().out


def test_caching_is_left_to_the_compiled_pipeline_without_no_cache(package, stub):
    assert main(["submit", "--package", package, "--host", "h", "--arguments", json.dumps(ARGS)]) == 0
    (_, run), = [call for call in stub if call[0] == "run"]
    assert run["enable_caching"] is None and run["service_account"] == "esmm-pipeline"


def test_schedule_creates_a_recurring_run_with_kfp_cron(package, stub, capsys):
    assert main(["submit", "--package", package, "--host", "h", "--arguments", json.dumps(SCHEDULED),
                 "--experiment", "daily",
                 "--run-name", "esmm-nightly", "--schedule", "0 3 * * *"]) == 0
    assert stub[1] == ("experiment", {"name": "daily", "namespace": None})
    kind, recurring = stub[2]
    assert kind == "recurring" and recurring["experiment_id"] == "exp-9"
    assert recurring["cron_expression"] == "0 0 3 * * *"  # KFP's cron has seconds first
    assert recurring["job_name"] == "esmm-nightly" and recurring["params"] == SCHEDULED
    assert recurring["pipeline_package_path"] == package
    assert "created recurring run rec-7 (0 0 3 * * *)" in capsys.readouterr().out


def test_dry_run_prints_the_request_and_sends_nothing(package, stub, capsys):
    assert main(["submit", "--package", package, "--host", "h", "--arguments", json.dumps(ARGS), "--no-cache",
                 "--schedule", "*/30 * * * *", "--dry-run"]) == 0
    assert stub == []
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"host": "h", "package": package, "arguments": ARGS, "enable_caching": False,
                       "service_account": "esmm-pipeline", "schedule": "0 */30 * * * *"}


def test_an_unreachable_host_fails_in_one_line_naming_it(package, capsys):
    code = main(["submit", "--package", package, "--host", "http://127.0.0.1:9", "--arguments", json.dumps(ARGS)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("esmm submit: error: cannot reach the KFP endpoint http://127.0.0.1:9")


def test_a_refused_credential_says_so(package):
    from kfp_server_api.exceptions import ApiException

    def refusing(host, namespace, **credentials):
        raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(Exception,
                       match=r"the KFP endpoint https://kfp.example refused the request \(HTTP 403 Forbidden\)"):
        submit(Submission(host="https://kfp.example", package=package, arguments=ARGS), client_factory=refusing)


@pytest.mark.parametrize("bad", ["daily", "0 3 * *", "0 3 * * * * *", "0 3 * * $"])
def test_a_malformed_schedule_is_refused(bad, package, stub, capsys):
    assert main(["submit", "--package", package, "--host", "h", "--schedule", bad]) == 2
    assert "is not a cron expression" in capsys.readouterr().err and stub == []


def test_cron_keeps_six_fields():
    assert kfp_cron("30 0 3 * * 1-5") == "30 0 3 * * 1-5"


def test_an_existing_token_cookies_and_a_ca_bundle_reach_the_client_and_stay_out_of_dry_runs(package, stub, tmp_path,
                                                                                          capsys):
    token, cookies, ca = tmp_path / "token", tmp_path / "cookies", tmp_path / "ca.pem"
    token.write_text("eyJhbGciOi.secret\n")
    cookies.write_text("oauth2_proxy_kubeflow=session-secret\n")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    flags = ["submit", "--package", package, "--host", "https://kfp.example", "--arguments", json.dumps(ARGS),
             "--token-file", str(token), "--cookies-file", str(cookies), "--ca-bundle", str(ca)]
    assert main(flags) == 0
    assert stub[0] == ("client", {"host": "https://kfp.example", "namespace": None,
                                  "existing_token": "eyJhbGciOi.secret",
                                  "cookies": "oauth2_proxy_kubeflow=session-secret", "ssl_ca_cert": str(ca)})
    capsys.readouterr()
    assert main([*flags, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "secret" not in printed and json.loads(printed)["token_file"] == str(token)
    assert main([*flags[:-2], "--ca-bundle", str(tmp_path / "missing.pem")]) == 2
    assert f"--ca-bundle {str(tmp_path / 'missing.pem')!r} does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("states, code", [(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"], 0),
                                          (["RUNNING", "FAILED"], 1), (["RUNNING", "CANCELED"], 1)])
def test_watch_follows_the_run_to_its_end_and_fails_unless_it_succeeded(package, stub, capsys, states, code):
    StubClient.states = list(states)
    assert main(["submit", "--package", package, "--host", "h", "--arguments", json.dumps(ARGS), "--watch"]) == code
    out = capsys.readouterr().out
    entered = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("run run-123: ")]
    assert entered[:len(set(states))] == list(dict.fromkeys(states))  # each state once, as it is entered
    assert [c for c in stub if c[0] == "get_run"][-1][1]["state"] == states[-1]  # stopped at the end, no further
    if states[-1] == "FAILED":
        assert "run run-123: task train-step failed: OOMKilled" in out


def test_watch_needs_a_single_run(package, stub, capsys):
    assert main(["submit", "--package", package, "--host", "h", "--arguments", json.dumps(SCHEDULED),
                 "--schedule", "0 3 * * *", "--watch"]) == 2
    assert "--watch follows a single run" in capsys.readouterr().err and stub == []
    with pytest.raises(Exception, match="--watch follows a single run"):
        watch(Submitted("recurring run rec-7"), "h")


def test_schedule_time_macros_go_in_input_path(package, stub, capsys):
    elsewhere = {**SCHEDULED, "ground_truth": f"gs://bucket/truth/{SCHEDULED_DATE}.csv"}
    assert main(["submit", "--package", package, "--host", "h", "--arguments", json.dumps(elsewhere),
                 "--schedule", "0 3 * * *"]) == 2
    assert "ground_truth: a schedule-time macro is formatted in input_path only" in capsys.readouterr().err
    # a schedule on a fixed input path is allowed, with a note
    assert main(["submit", "--package", package, "--host", "h", "--arguments", json.dumps(ARGS),
                 "--schedule", "0 3 * * *", "--dry-run"]) == 0
    assert "input_path holds no schedule-time macro" in capsys.readouterr().err
    assert SCHEDULED_DATE == "{{$.scheduledTime.strftime('%Y-%m-%d')}}"  # KFP backend's parameter_formatter.go


def test_the_snapshot_formats_input_path_at_the_schedule_time():
    import datetime

    from esmm_model.errors import EsmmError
    from pipelines.schedule import with_schedule_time

    template = "gs://bucket/logs/" + SCHEDULED_DATE + "/hour={{$.scheduledTime.strftime('%H')}}"
    # KFP's {{$.pipeline_job_schedule_time_utc}}: RFC 3339, UTC
    assert with_schedule_time(template, "2026-11-27T03:00:00Z") == "gs://bucket/logs/2026-11-27/hour=03"
    assert with_schedule_time(template, "2026-11-27T01:30:00+02:00") == "gs://bucket/logs/2026-11-26/hour=23"
    local = datetime.datetime(2026, 12, 4, 18, 0, tzinfo=datetime.timezone.utc)
    assert with_schedule_time(template, None, now=local) == "gs://bucket/logs/2026-12-04/hour=18"
    assert with_schedule_time("gs://bucket/logs/2026-11-27", "garbage") == "gs://bucket/logs/2026-11-27"
    with pytest.raises(EsmmError, match="schedule time 'garbage' is not an RFC 3339 time"):
        with_schedule_time(template, "garbage")
