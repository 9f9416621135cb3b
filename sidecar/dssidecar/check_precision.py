"""Compare a lower precision with fp32 on a fixed prompt set, before trusting it with traffic.

Why this exists: int8/fp8/bf16 are faster or smaller but can change the model's answers. Three figures,
all teacher-forced over the same token sequences (so one early difference does not snowball):
- top-1 agreement: the share of positions where both pick the same next token (greedy agreement);
- mean KL(fp32 || candidate) of the next-token distributions, in nats;
- perplexity of the actual next tokens under each, and the relative delta (ppl_candidate / ppl_fp32 - 1).
`dssidecar check-precision` prints them and exits non-zero past the thresholds; the knob controller runs
the same check before a live precision switch when `require_accuracy_check` is on.

The prompt set is fixed: evenly spaced windows of the corpus shipped with the package (the text the
demo model was trained on), or the texts the caller passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dssidecar.precision import convert_model, precision_plan

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "corpus.txt"
DEFAULT_MIN_AGREEMENT = 0.90
DEFAULT_MAX_KL = 0.05
DEFAULT_MAX_PPL_DELTA = 0.05
FALLBACK_TEXTS = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "import os\nimport sys\n\n\ndef main(argv):\n    for name in sorted(os.listdir(argv[1])):\n        print(name)\n",
    "Return a new list containing all items from the iterable in ascending order.",
)


@dataclass
class Thresholds:
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    max_kl: float = DEFAULT_MAX_KL
    max_ppl_delta: float = DEFAULT_MAX_PPL_DELTA


@dataclass
class PrecisionReport:
    precision: str
    device: str
    num_sequences: int
    num_positions: int
    top1_agreement: float
    mean_kl: float
    perplexity_fp32: float
    perplexity_candidate: float
    perplexity_delta: float  # relative: ppl_candidate / ppl_fp32 - 1
    seconds: float
    thresholds: Thresholds = field(default_factory=Thresholds)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        figures = asdict(self)
        figures["passed"] = self.passed
        return figures


def fixed_prompt_texts(num_texts: int = 16, corpus_path: Path = CORPUS_PATH, chars_per_text: int = 600) -> list[str]:
    """`num_texts` evenly spaced windows of the shipped corpus (fixed set), or built-in texts without it."""
    try:
        corpus = corpus_path.read_text(encoding="utf-8")
    except OSError:
        return list(FALLBACK_TEXTS)
    if len(corpus) < chars_per_text * 2:
        return list(FALLBACK_TEXTS)
    stride = (len(corpus) - chars_per_text) // max(1, num_texts)
    return [corpus[i * stride : i * stride + chars_per_text] for i in range(num_texts)]


@torch.inference_mode()
def sequence_logits(model: nn.Module, token_ids: Sequence[int], kv_dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Logits [L, vocab] (fp32) for every position of one sequence, through the engine's paged model."""
    from dssidecar.models.attention import AttentionMetadata

    paged_model: Any = model  # the engine's LlamaForCausalLM: config, forward(ids, positions, kv, meta), compute_logits
    config = paged_model.config
    num_tokens = len(token_ids)
    block_size = 16
    num_blocks = (num_tokens + block_size - 1) // block_size
    kv_cache = torch.zeros(
        config.num_hidden_layers, 2, num_blocks, block_size, config.num_key_value_heads, config.head_dim,
        dtype=kv_dtype, device=device,
    )
    input_ids = torch.tensor(list(token_ids), dtype=torch.long, device=device)
    positions = torch.arange(num_tokens, device=device)
    meta = AttentionMetadata(is_prefill=True, slot_mapping=positions.clone(), num_seqs=1, max_query_len=num_tokens)
    hidden = paged_model(input_ids, positions, kv_cache, meta)
    logits: torch.Tensor = paged_model.compute_logits(hidden)
    return logits.float()


def compare_models(
    reference: nn.Module,
    candidate: nn.Module,
    sequences: Sequence[Sequence[int]],
    candidate_kv_dtype: torch.dtype,
    device: torch.device,
) -> dict[str, float]:
    """Teacher-forced agreement, mean KL and perplexities of `candidate` against `reference`."""
    agree = 0
    positions = 0
    kl_sum = 0.0
    nll_reference = 0.0
    nll_candidate = 0.0
    for token_ids in sequences:
        if len(token_ids) < 2:
            continue
        ref_logp = F.log_softmax(sequence_logits(reference, token_ids, torch.float32, device), dim=-1)
        cand_logp = F.log_softmax(sequence_logits(candidate, token_ids, candidate_kv_dtype, device), dim=-1)
        agree += int((ref_logp.argmax(-1) == cand_logp.argmax(-1)).sum())
        positions += ref_logp.shape[0]
        kl_sum += float((ref_logp.exp() * (ref_logp - cand_logp)).sum(-1).clamp(min=0).sum())
        targets = torch.tensor(list(token_ids[1:]), device=device)
        nll_reference += float(F.nll_loss(ref_logp[:-1], targets, reduction="sum"))
        nll_candidate += float(F.nll_loss(cand_logp[:-1], targets, reduction="sum"))
    if positions == 0:
        raise ValueError("check-precision needs at least one prompt of two or more tokens")
    predicted = positions - sum(1 for t in sequences if len(t) >= 2)
    ppl_reference = math.exp(nll_reference / predicted)
    ppl_candidate = math.exp(nll_candidate / predicted)
    return {
        "top1_agreement": agree / positions,
        "mean_kl": kl_sum / positions,
        "perplexity_fp32": ppl_reference,
        "perplexity_candidate": ppl_candidate,
        "perplexity_delta": ppl_candidate / ppl_reference - 1.0,
        "num_positions": float(positions),
    }


def check_precision(
    model_fp32: nn.Module,
    token_sequences: Sequence[Sequence[int]],
    precision: str,
    device: torch.device | str,
    thresholds: Thresholds | None = None,
    candidate: nn.Module | None = None,
) -> PrecisionReport:
    """Convert `model_fp32` to `precision` (unless `candidate` is given) and compare. Raises
    UnsupportedPrecisionError when the precision cannot run on `device`."""
    thresholds = thresholds or Thresholds()
    dev = torch.device(device)
    plan = precision_plan(precision, dev)
    started = time.perf_counter()
    if candidate is None:
        candidate = convert_model(model_fp32, precision, dev)
    figures = compare_models(model_fp32, candidate, token_sequences, plan.kv_dtype, dev)
    report = PrecisionReport(
        precision=precision,
        device=str(dev),
        num_sequences=len(token_sequences),
        num_positions=int(figures["num_positions"]),
        top1_agreement=figures["top1_agreement"],
        mean_kl=figures["mean_kl"],
        perplexity_fp32=figures["perplexity_fp32"],
        perplexity_candidate=figures["perplexity_candidate"],
        perplexity_delta=figures["perplexity_delta"],
        seconds=time.perf_counter() - started,
        thresholds=thresholds,
    )
    if report.top1_agreement < thresholds.min_agreement:
        report.failures.append(f"top-1 agreement {report.top1_agreement:.4f} < min {thresholds.min_agreement}")
    if report.mean_kl > thresholds.max_kl:
        report.failures.append(f"mean KL {report.mean_kl:.5f} > max {thresholds.max_kl}")
    if report.perplexity_delta > thresholds.max_ppl_delta:
        report.failures.append(f"perplexity delta {report.perplexity_delta:+.4f} > max {thresholds.max_ppl_delta}")
    return report


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int = 128) -> list[list[int]]:
    return [list(tokenizer.encode(text))[:max_tokens] for text in texts]


def check_precision_for_model_dir(
    model_dir: str | Path,
    precision: str,
    device: str = "auto",
    thresholds: Thresholds | None = None,
    num_prompts: int = 16,
    max_tokens_per_prompt: int = 128,
) -> PrecisionReport:
    """Load the checkpoint in fp32 and run the check on the fixed prompt set."""
    from dssidecar.device import resolve_device
    from dssidecar.models.loader import load_checkpoint

    dev = resolve_device(device)
    loaded = load_checkpoint(model_dir, device=dev, dtype=torch.float32)
    sequences = tokenize_texts(loaded.tokenizer, fixed_prompt_texts(num_prompts), max_tokens_per_prompt)
    return check_precision(loaded.model, sequences, precision, dev, thresholds)


def format_report(report: PrecisionReport) -> str:
    t = report.thresholds
    rows = [
        ("precision", report.precision, ""),
        ("device", report.device, ""),
        ("prompts / positions", f"{report.num_sequences} / {report.num_positions}", ""),
        ("top-1 agreement", f"{report.top1_agreement:.4f}", f">= {t.min_agreement}"),
        ("mean KL (nats)", f"{report.mean_kl:.5f}", f"<= {t.max_kl}"),
        ("perplexity fp32", f"{report.perplexity_fp32:.3f}", ""),
        (f"perplexity {report.precision}", f"{report.perplexity_candidate:.3f}", ""),
        ("perplexity delta", f"{report.perplexity_delta:+.4f}", f"<= {t.max_ppl_delta}"),
        ("seconds", f"{report.seconds:.2f}", ""),
        ("result", "PASS" if report.passed else "FAIL: " + "; ".join(report.failures), ""),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {value:<12}  {limit}".rstrip() for name, value, limit in rows)
