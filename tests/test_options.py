"""One options object (TaskOptions) checks every facade's options once, with a clear message."""

from __future__ import annotations

import pytest

import allcores
from allcores._engine.options import TaskOptions

BAD = [
    ({"timeout": 0}, ValueError, "timeout must be a positive number"),
    ({"timeout": "5"}, ValueError, "timeout must be a positive number"),
    ({"timeout": True}, ValueError, "timeout must be a positive number"),
    ({"retries": -1}, ValueError, "retries must be a non-negative integer"),
    ({"retries": 1.5}, ValueError, "retries must be a non-negative integer"),
    ({"retry_on": "ValueError"}, TypeError, "retry_on must be an exception class"),
    ({"retry_on": (ValueError, 3)}, TypeError, "retry_on must be an exception class"),
]
PER_CALL_BAD = [
    *BAD,
    ({"on_error": "ignore"}, ValueError, "on_error must be one of 'raise', 'collect', 'skip'"),
    ({"chunksize": 0}, ValueError, "chunksize must be a positive integer or 'auto'"),
    ({"progress": "yes"}, TypeError, "progress must be True, False or an object"),
]


@pytest.mark.parametrize(("kwargs", "kind", "message"), BAD)
def test_pool_and_executor_constructors_reject_bad_options(kwargs, kind, message):
    with pytest.raises(kind, match=message):
        allcores.Pool(1, **kwargs)
    with pytest.raises(kind, match=message):
        allcores.Executor(1, **kwargs)


@pytest.fixture(scope="module")
def pool():
    with allcores.Pool(1) as p:
        yield p


@pytest.mark.parametrize(("kwargs", "kind", "message"), PER_CALL_BAD)
def test_every_call_rejects_bad_options_before_running_anything(pool, kwargs, kind, message):
    for call in (pool.map, pool.imap, pool.imap_unordered, pool.map_async):
        with pytest.raises(kind, match=message):
            call(abs, [1, 2], **kwargs)
    with pytest.raises(kind, match=message):
        allcores.map(abs, [1, 2], workers=1, **kwargs)
    assert pool.map(abs, [-1, -2]) == [1, 2]  # the pool is unharmed


def test_options_are_one_frozen_object_and_per_call_values_override_defaults():
    base = TaskOptions(item_timeout=5.0, retries=2, retry_on=KeyError)
    assert base.retry_on == (KeyError,)
    call = base.merged(retries=None, on_error="collect", chunksize="auto")
    assert (call.item_timeout, call.retries, call.on_error, call.chunksize) == (
        5.0, 2, "collect", None,
    )
    with pytest.raises(AttributeError):
        call.retries = 3  # type: ignore[misc]


def test_executor_map_rejects_a_bad_chunksize():
    with allcores.Executor(1) as ex, pytest.raises(ValueError, match="chunksize"):
        ex.map(abs, [1], chunksize=-2)
