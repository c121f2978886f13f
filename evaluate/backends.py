"""Generation backends: what the harness and the log-likelihood scorer call, whoever runs the model: transformers
in this process (HFBackend), a model behind an OpenAI-compatible API (evaluate.api_model.APIModel), or a vLLM
server serving a variant (evaluate.vllm_server.VLLMServer). Same frozen prompts, same decoding, same stops."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from evaluate.generation import DecodingConfig, Generation, generate
from evaluate.loglikelihood import continuation_logprobs


@runtime_checkable
class GenerationBackend(Protocol):
    def generate(self, prompts: Sequence[str], config: DecodingConfig,
                 on_batch: Callable[[list[int], list[Generation]], None] | None = None) -> list[Generation]:
        """Completions in prompt order; `on_batch(indices, generations)` after each finished batch."""
        ...

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]],
                              batch_size: int = 16) -> list[tuple[float, int]] | None:
        """(summed log-probability, token count) of each continuation after its context; None: not offered."""
        ...


@dataclass
class HFBackend:
    """A transformers model loaded in this process (the format it was saved in, as it really runs)."""

    model: Any
    tokenizer: Any

    def generate(self, prompts: Sequence[str], config: DecodingConfig,
                 on_batch: Callable[[list[int], list[Generation]], None] | None = None) -> list[Generation]:
        return generate(self.model, self.tokenizer, prompts, config, on_batch)

    def continuation_logprobs(self, pairs: Sequence[tuple[str, str]],
                              batch_size: int = 16) -> list[tuple[float, int]] | None:
        return continuation_logprobs(self.model, self.tokenizer, pairs, batch_size)
