"""The engine under every public API: processes, scheduling, messages and serialization.

Nothing here is public. The facades (``allcores.Pool``, ``allcores.Executor``, ``allcores.map``)
build a :class:`~allcores._engine.jobs.Job` and hand it to a
:class:`~allcores._engine.manager.Manager`; see ``manager.py`` for the data-flow diagram.
"""
