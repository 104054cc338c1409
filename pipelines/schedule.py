"""Schedule-time macros in run arguments: a recurring run reads the input of its own date.

``input_path`` may hold KFP's recurring-run macro ``{{$.scheduledTime.strftime('<format>')}}``
(the syntax of the KFP backend's parameter formatter, backend/src/common/util/parameter_formatter.go).
KFP 2.16/2.17 format it only for runs that carry a scheduled time, which the API path that starts a
v2 recurring run's runs does not set, so it can reach the pipeline verbatim. The snapshot step
formats what is left with ``{{$.pipeline_job_schedule_time_utc}}``, which the compiled pipeline hands
it: KFP's driver (backend >= 2.16.0) resolves that to the recurring run's exact scheduled time, and to
the creation time of a run started by hand. Locally there is no KFP, so the current time stands in.
"""
from __future__ import annotations

import datetime
import re
from typing import Optional

from esmm_model.errors import EsmmError

SCHEDULED_DATE = "{{$.scheduledTime.strftime('%Y-%m-%d')}}"
MACRO = re.compile(r"\{\{\$\.scheduledTime\.strftime\('([^']*)'\)\}\}")


def has_schedule_macro(text: str) -> bool:
    return bool(MACRO.search(text))


def with_schedule_time(text: str, schedule_time_utc: Optional[str],
                       now: Optional[datetime.datetime] = None) -> str:
    """``text`` with every schedule-time macro formatted at ``schedule_time_utc`` (RFC 3339, as KFP's
    placeholder gives it); None (a local run) formats the current UTC time. EsmmError names a bad time."""
    if not has_schedule_macro(text):
        return text
    if schedule_time_utc:
        try:
            when = datetime.datetime.fromisoformat(schedule_time_utc.replace("Z", "+00:00"))
        except ValueError:
            raise EsmmError(f"schedule time {schedule_time_utc!r} is not an RFC 3339 time; is the KFP backend "
                            f"older than 2.16 (which resolves {{{{$.pipeline_job_schedule_time_utc}}}})?") from None
        when = when.astimezone(datetime.timezone.utc)
    else:
        when = now or datetime.datetime.now(datetime.timezone.utc)
    return MACRO.sub(lambda m: when.strftime(m.group(1)), text)
