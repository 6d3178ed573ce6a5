"""Bad input ends a task Failed with its one line, not a traceback.

A task body raising ``BadInputError`` (a damaged shard, an unreadable image, a malformed
trajectory) returns ``Failed(message=…)`` instead: Prefect shows the line in the UI and logs no
traceback, since there is no bug to trace. Its flow calls the task with ``return_state=True`` and
ends with the same state's message. Any other exception stays an exception, traceback and all.
"""
from __future__ import annotations

import functools

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
