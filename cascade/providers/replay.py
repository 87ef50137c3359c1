"""Serve recorded answers from a replay dataset, exactly as a live provider would report them.

The benchmark and calibration swap live providers for this one and run the same engine. The
ground-truth ``score`` of a recording stays here: nothing of it reaches a ``Completion``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cascade.config import ProviderConfig
from cascade.errors import ConfigError, ProviderError
from cascade.providers.base import empty_answer
from cascade.providers.dataset import RecordedResponse, ReplayRecord, iter_dataset
from cascade.types import Completion, Message

__all__ = ["ReplayProvider"]


class ReplayProvider:
    """Answers ``(query id, model name)`` from recordings.

    Args:
        name: The ``providers:`` key.
        config: Its settings; ``dataset`` is the JSONL file to serve (optional when the
            benchmark hands the records over with ``use``).
        records: Records to serve instead of reading ``config.dataset``.
    """

    supports_logprobs = True  # recordings may carry a mean token log-probability
    transient_faults = False  # nothing to retry: a missing recording stays missing

    def __init__(
        self,
        name: str,
        config: ProviderConfig | None = None,
        *,
        records: Iterable[ReplayRecord] | None = None,
    ):
        self.name = name
        self.config = config or ProviderConfig(type="replay")
        self._index: dict[str, Mapping[str, RecordedResponse]] | None = None
        self._lock = threading.Lock()
        if records is not None:
            self.use(records)

    def __repr__(self) -> str:
        return f"ReplayProvider(name={self.name!r}, dataset={self.config.dataset!r})"

    def use(self, records: Iterable[ReplayRecord]) -> None:
        """Serve these records (what ``cascade bench`` does with the dataset it is given)."""
        self._index = {r.id: r.responses for r in records}

    def _responses(self) -> dict[str, Mapping[str, RecordedResponse]]:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    if not self.config.dataset:
                        raise ConfigError(
                            "a replay provider needs a dataset: set dataset: PATH, or run it "
                            "through cascade bench/calibrate",
                            location=f"providers.{self.name}",
                        )
                    self.use(iter_dataset(Path(self.config.dataset)))
        assert self._index is not None
        return self._index

    def complete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion:
        if query_id is None:
            raise ProviderError(
                f"{self.name}: replay needs a query id (complete(..., query_id=))",
                provider=self.name,
                model=model,
            )
        responses = self._responses().get(query_id)
        if responses is None:
            raise ProviderError(
                f"{self.name}: no recorded query {query_id!r}",
                provider=self.name,
                model=model,
                status_code=404,
            )
        recorded = responses.get(model)
        if recorded is None:
            raise ProviderError(
                f"{self.name}: no recording of {model!r} for query {query_id!r}",
                provider=self.name,
                model=model,
                status_code=404,
            )
        done = Completion(
            text=recorded.text,
            provider=self.name,
            input_tokens=recorded.input_tokens or 0,
            output_tokens=recorded.output_tokens or 0,
            latency_ms=recorded.latency_ms or 0.0,
            logprobs=(recorded.logprob,) if recorded.logprob is not None else None,
            cost_usd=recorded.cost_usd,
        )
        if not recorded.text.strip():
            # Live providers treat an empty answer as a fault, still billed; replay does too.
            error = empty_answer(self.name, model, "an empty message (recorded)", done)
            error.retryable = False
            raise error
        return done

    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        model: str,
        params: Mapping[str, Any],
        query_id: str | None = None,
    ) -> Completion:
        return self.complete(messages, model=model, params=params, query_id=query_id)
