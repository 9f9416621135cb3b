"""One request inside the engine: its tokens, KV blocks, sampling state and output bookkeeping.

The scheduler and block manager move a Sequence between queues and give it blocks; the runner reads
`token_ids[num_cached_tokens : num_cached_tokens + num_scheduled_tokens]` (prefill) or `last_token`
(decode); postprocess appends sampled tokens and decides when it is finished.
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field

import torch

from dssidecar.engine.protocol import FinishReason, SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


_seq_counter = itertools.count()


@dataclass(eq=False)
class Sequence:
    request_id: str
    token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    block_size: int = 16
    seq_id: int = field(default_factory=lambda: next(_seq_counter))
    status: SequenceStatus = SequenceStatus.WAITING
    num_prompt_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    num_cached_tokens: int = 0  # tokens whose K/V are in the pool
    num_scheduled_tokens: int = 0  # tokens this step computes
    num_hashed_blocks: int = 0  # leading full blocks registered for prefix reuse
    num_preemptions: int = 0
    first_token_time: float | None = None
    finish_time: float | None = None
    finish_reason: FinishReason | None = None
    error: str | None = None  # set when the engine failed this request
    generator: torch.Generator | None = None  # per-request seed
    # output bookkeeping (filled by the engine's postprocess)
    output_text: str = ""
    num_text_chars_sent: int = 0
    num_tokens_sent: int = 0  # completion tokens already handed out in a delta
    detokenizer: object | None = None

    def __post_init__(self) -> None:
        if not self.num_prompt_tokens:
            self.num_prompt_tokens = len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_blocks(self) -> int:
        """Blocks needed to hold every token of the sequence so far."""
        return (len(self.token_ids) + self.block_size - 1) // self.block_size

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def block_tokens(self, index: int) -> list[int]:
        return self.token_ids[index * self.block_size : (index + 1) * self.block_size]
