"""The engine: what runs per request.

``Cascade`` (in ``facade``) is the entry point; ``building`` turns a config into providers and
task ladders, ``ladder`` and ``plan`` walk a ladder rung by rung, ``caller`` makes one provider
call with ``retry``, ``limits``/``budget``/``breaker`` decide whether a call may start,
``recorder`` writes each step to the ledger, ``cache`` and ``shadow`` sit beside the ladder.
"""

from cascade.engine.facade import Cascade

__all__ = ["Cascade"]
