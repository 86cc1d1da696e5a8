"""One backoff and one "database unavailable" tuple (syncd.errors), used by every caller.

Guards issue 12's "Between Python and SQL": the supervisor, retry_database, the trade
stream, Alpaca's reconnects and the HTTP retries each had their own exponential delay, and
five modules their own tuple of database errors. Each caller keeps its base and cap.
"""

from __future__ import annotations

import inspect
import random

import asyncpg
import pytest
from tenacity import RetryCallState, Retrying
from tenacity.wait import wait_random_exponential

from syncd.cli import sync as cli_sync
from syncd.cycles import verify
from syncd.daemon import health, passes, supervisor
from syncd.errors import DB_ERRORS, DB_UNAVAILABLE, backoff
from syncd.trading.stream import backoff_delay


def test_without_jitter_the_delay_doubles_from_base_to_cap() -> None:
    assert [backoff(n, 1.0, 30.0) for n in (0, 1, 2, 3, 5, 6, 10_000)] == [1, 1, 2, 4, 16, 30, 30]
    assert [supervisor.backoff(n) for n in (1, 2, 7, 8)] == [1, 2, 60, 60]


@pytest.mark.parametrize("failures", [1, 2, 3, 6, 40])
def test_half_jitter_stays_in_the_upper_half(failures: int) -> None:
    top = backoff(failures, 1.0, 60.0)
    for _ in range(200):
        assert top / 2 <= backoff(failures, 1.0, 60.0, jitter="half") <= top
        assert top / 2 <= backoff_delay(failures) <= top


@pytest.mark.parametrize("attempt", [1, 2, 3, 5, 12])
def test_full_jitter_draws_what_tenacity_drew(attempt: int) -> None:
    """brokers/http.py replaced tenacity's wait_random_exponential: same draw for the same seed."""
    state = RetryCallState(Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    random.seed(attempt)
    theirs = float(wait_random_exponential(multiplier=0.5, max=8.0)(state))
    random.seed(attempt)
    assert backoff(attempt, 0.5, 8.0, jitter="full") == pytest.approx(theirs)


def test_every_module_uses_the_one_db_error_tuple() -> None:
    assert passes._DB_ERRORS is verify._DB_ERRORS is DB_ERRORS
    # cli/sync.py imports it when a command runs (``syncd --help`` imports no asyncpg): the same tuple
    assert "from syncd.errors import DB_ERRORS" in inspect.getsource(cli_sync.import_all)
    assert health.DB_DOWN_ERRORS is DB_ERRORS
    assert supervisor.RETRYABLE_DB_ERRORS is DB_UNAVAILABLE


@pytest.mark.parametrize(
    "exc",
    [TimeoutError(), ConnectionRefusedError(), asyncpg.InterfaceError("x"), asyncpg.CannotConnectNowError("x")],
)
def test_connection_failures_are_both_unavailable_and_db_errors(exc: BaseException) -> None:
    assert isinstance(exc, DB_ERRORS)
    assert isinstance(exc, DB_UNAVAILABLE)


def test_an_sql_error_is_a_db_error_but_not_retried_at_startup() -> None:
    """retry_database must not retry a broken migration forever: only connection failures."""
    exc = asyncpg.UndefinedTableError("x")
    assert isinstance(exc, DB_ERRORS)
    assert not isinstance(exc, DB_UNAVAILABLE)


def test_a_connection_left_mid_operation_is_a_db_error() -> None:
    """Guards the database-restart case: a pooled connection whose cancelled operation had not
    unwound raised InternalClientError out of the pass's bookkeeping and crashed the task."""
    assert isinstance(
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"), DB_ERRORS
    )


def test_a_connection_left_mid_operation_fails_a_task_without_crashing_it() -> None:
    """The same error escaping a task loop (outside an account pass) is a database outage, not a bug:
    the task is restarted with backoff and logged as ``task_failed``, not ``task_crashed``."""
    from syncd.daemon.supervisor import _EXPECTED_TASK_ERRORS

    error = asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
    assert isinstance(error, _EXPECTED_TASK_ERRORS)
    assert not isinstance(RuntimeError("a bug"), _EXPECTED_TASK_ERRORS)
