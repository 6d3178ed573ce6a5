"""Bad input ends a task Failed with its one line, not a traceback.

A task body raising ``BadInputError`` (a damaged shard, an unreadable image, a malformed
trajectory) returns ``Failed(message=…)`` instead: Prefect shows the line in the UI and logs no
traceback, since there is no bug to trace. Its flow calls the task with ``return_state=True`` and
ends with the same state's message. Any other exception stays an exception, traceback and all.

Prefect logs a returned Failed state with ``exc_info=True`` although nothing was raised, which
prints a stray "NoneType: None" under the line: :class:`NoEmptyTraceback` drops that empty
exception from its task-run records (a real exception's traceback is kept).
"""
from __future__ import annotations

import functools
import logging

from prefect.states import Failed

from ic_data.errors import BadInputError


def bad_input_fails(fn):
    """Decorate a task's function (under ``@task``)."""

    @functools.wraps(fn)
    def body(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BadInputError as err:
            return Failed(message=str(err))

    return body


class NoEmptyTraceback(logging.Filter):
    """Clear a record's ``exc_info`` when it holds no exception (``exc_info=True`` outside ``except``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


if not any(isinstance(f, NoEmptyTraceback) for f in logging.getLogger("prefect.task_runs").filters):
    logging.getLogger("prefect.task_runs").addFilter(NoEmptyTraceback())
