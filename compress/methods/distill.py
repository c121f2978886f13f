"""Knowledge distillation from a teacher (by default the study's FP baseline) into the current model:
KL divergence on temperature-scaled logits (Hinton et al.), optionally cross-entropy on the text and
an MSE on hidden states; full fine-tuning or LoRA (peft). The recovery step after pruning:

- sparsity masks are kept exactly: gradients of pruned weights are masked and the mask re-applied after
  every optimizer step (and after merging LoRA), so zeros stay zero;
- after a bitsandbytes quantization step it trains LoRA adapters on the frozen quantized base (QLoRA)
  and saves base + adapter side by side, which transformers reloads as one model.

Hand-written training loop: llm-compressor removed its distillation entry points and no installed
library distils one causal LM into another with masks kept."""

from __future__ import annotations

import logging
import math
import random
import shutil
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from compress.calibration import synthetic_pairs
from compress.methods._calib import model_device
from compress.methods._sparsity import nonzero_masks, prunable_linears
from compress.registry import MethodParams, MethodSpec, StepContext, method
from evaluate.models import load_model, resolve_model_source

log = logging.getLogger("slimlab")
QLORA_FORMATS = ("bnb",)  # quantized bases peft can train LoRA adapters on, by MethodSpec.produces


class DistillParams(MethodParams):
    teacher: str | None = Field(None, description="null: the study's FP baseline; or a local path / embedded:<name>")
    steps: int = Field(200, ge=1)
    lr: float = Field(3e-4, gt=0, lt=1, description="tuned on the embedded model: 1e-3 and above overshoot")
    batch_size: int = Field(8, ge=1)
    seq_len: int = Field(256, ge=8)
    n_samples: int = Field(512, ge=1, description="training texts")
    data: Literal["synthetic", "calibration"] = Field(
        "synthetic", description="synthetic: the project's training split; calibration: the recipe's source")
    completion_only: bool = Field(True, description="synthetic data: losses on the answer tokens only")
    temperature: float = Field(2.0, gt=0)
    kl_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(0.0, ge=0, description="cross-entropy on the text itself")
    hidden_weight: float = Field(0.0, ge=0, description="MSE between hidden states (normalized by the teacher's)")
    lora: bool = False
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    keep_sparsity: bool = Field(True, description="zeros of the pruned weights stay zero")
    warmup_steps: int = Field(10, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)

    accepts_quantized: ClassVar[bool] = True  # as QLoRA, on the formats in QLORA_FORMATS (see check_chain)

    def uses_calibration(self) -> bool:
        return self.data == "calibration"

    def describe(self) -> str:
        return f"{self.steps} steps, " + (f"LoRA r{self.lora_r}" if self.lora else "full fine-tuning")

    @field_validator("teacher")
    @classmethod
    def _teacher(cls, v: str | None) -> str | None:
        if v is not None:

            resolve_model_source(v)  # raises ModelSourceError with the fix
        return v

    @model_validator(mode="after")
    def _some_loss(self) -> DistillParams:
        if self.kl_weight == 0 and self.ce_weight == 0 and self.hidden_weight == 0:
            raise ValueError("kl_weight, ce_weight and hidden_weight are all 0: nothing to train on; "
                             "set kl_weight: 1.0")
        return self

    def check_chain(self, earlier: list[MethodSpec]) -> list[tuple[str, str]]:
        quantized = [s for s in earlier if s.finalizes]
        if not quantized:
            return []
        q = quantized[-1]
        if q.produces not in QLORA_FORMATS:
            return [("lora", f"comes after {q.name!r}, whose {q.produces} format peft cannot train adapters on "
                     "here; LoRA recovery on a quantized base (QLoRA) runs on bitsandbytes layers only: put "
                     f"'distill' before {q.name!r}, or quantize with bnb_4bit / bnb_int8")]
        if not self.lora:
            return [("lora", f"after {q.name!r} the weights are quantized and cannot be fine-tuned directly; "
                     "set lora: true (QLoRA: adapters trained on the frozen quantized base)")]
        return []


def _is_quantized(model: Any) -> bool:
    return getattr(model, "hf_quantizer", None) is not None or getattr(model.config, "quantization_config", None)


def load_teacher(params: DistillParams, ctx: StepContext) -> Any:

    location = ctx.source_dir if params.teacher is None else resolve_model_source(params.teacher).materialize().location
    teacher = load_model(str(location), "float32", ctx.device, ctx.trust_remote_code)
    teacher.requires_grad_(False)
    return teacher


def training_pairs(params: DistillParams, ctx: StepContext) -> list[tuple[str, str]]:
    """(prompt, completion + EOS) from the training split (never evaluation items); the loss covers the
    completion only when completion_only is set, else the whole text (prompt "")."""
    eos = ctx.tokenizer.eos_token or ""
    if params.data == "synthetic":

        pairs = synthetic_pairs(params.n_samples, ctx.seed)
        if not params.completion_only:
            pairs = [("", p + a) for p, a in pairs]
    else:
        pairs = [("", t) for t in ctx.calibration_texts(params.n_samples, params.seq_len)]
    return [(p, a + eos) for p, a in pairs]


def encode(tokenizer: Any, pairs: list[tuple[str, str]], seq_len: int, device: Any) -> dict[str, torch.Tensor]:
    """Right-padded batch with `pred_mask`: 1 at positions whose next token belongs to a completion.
    Too long, a prompt + completion pair loses the start of its prompt, not the completion the loss is on;
    a whole text (prompt "") keeps its start, as calibration text does."""
    texts = [p + a for p, a in pairs]
    side, cut = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "right", "left" if any(p for p, _ in pairs) else "right"
    try:
        enc = tokenizer(texts, truncation=True, max_length=seq_len, padding=True, return_tensors="pt",
                        return_offsets_mapping=True)
        starts = enc.pop("offset_mapping")[..., 0]
        target = torch.tensor([len(p) for p, _ in pairs]).unsqueeze(1)
        in_completion = (starts >= target) & (enc["attention_mask"] == 1)  # prompt "": every real token
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = side, cut
    pred = torch.zeros_like(enc["attention_mask"])
    pred[:, :-1] = in_completion[:, 1:].long()
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
            "pred_mask": pred.to(device), "labels": enc["input_ids"].masked_fill(~in_completion, -100).to(device)}


def distill_loss(student_out: Any, teacher_out: Any, mask: torch.Tensor, params: DistillParams) -> dict:
    """KL(teacher_T || student_T) x T^2 per position (+ CE, + hidden MSE), averaged over `mask` (the
    positions that predict a trained token)."""
    m = mask.float()
    denom = m.sum().clamp(min=1.0)
    losses: dict[str, torch.Tensor] = {}
    if params.kl_weight:
        t = params.temperature
        s_logp = F.log_softmax(student_out.logits.float() / t, dim=-1)
        t_logp = F.log_softmax(teacher_out.logits.float() / t, dim=-1)
        kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="none").sum(-1)
        losses["kl"] = (kl * m).sum() / denom * t * t
    if params.ce_weight:
        losses["ce"] = student_out.loss
    if params.hidden_weight:
        s_h, t_h = student_out.hidden_states, teacher_out.hidden_states
        if s_h[-1].shape[-1] != t_h[-1].shape[-1]:
            raise ValueError(f"hidden_weight needs equal hidden sizes (student {s_h[-1].shape[-1]}, teacher "
                             f"{t_h[-1].shape[-1]}); set hidden_weight: 0")
        ls, lt = len(s_h) - 1, len(t_h) - 1
        terms = []
        for i in range(1, ls + 1):  # student layer i matched to the teacher layer at the same relative depth
            target = t_h[round(i * lt / ls)].float()
            err = ((s_h[i].float() - target) ** 2).mean(-1)
            terms.append((err * m).sum() / denom / target.pow(2).mean().clamp(min=1e-8))
        losses["hidden"] = torch.stack(terms).mean()
    weights = {"kl": params.kl_weight, "ce": params.ce_weight, "hidden": params.hidden_weight}
    losses["total"] = sum(weights[k] * v for k, v in losses.items())
    return losses


def _lora_config(params: DistillParams) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=0.0,
                      target_modules=params.lora_targets, bias="none")


def _attach_qlora(model: Any, params: DistillParams, ctx: StepContext) -> Any:
    """LoRA adapters on the frozen quantized base (transformers' peft integration). Saving writes the
    quantized base and the adapter into one directory; from_pretrained loads both."""
    base_dir = Path(ctx.workdir) / "qlora-base"
    model.save_pretrained(base_dir)
    model.add_adapter(_lora_config(params))
    original_save = model.save_pretrained

    def save_pretrained(directory: Any, *args: Any, **kwargs: Any) -> None:
        shutil.copytree(base_dir, directory, dirs_exist_ok=True)
        original_save(directory, *args, **kwargs)

    model.save_pretrained = save_pretrained
    return model


def _batches(tokenizer: Any, pairs: list[tuple[str, str]], params: DistillParams, seed: int, device: Any):
    """Endless seeded shuffles of the training pairs, in padded batches."""
    rng = random.Random(seed)
    order: list[tuple[str, str]] = []
    while True:
        if len(order) < params.batch_size:
            extra = list(pairs)
            rng.shuffle(extra)
            order += extra
        chunk, order = order[: params.batch_size], order[params.batch_size:]
        yield encode(tokenizer, chunk, params.seq_len, device)


@method("distill", "train", DistillParams,
        description="knowledge distillation from the FP baseline (KL on logits, optional CE / hidden MSE); "
                    "full fine-tuning or LoRA; keeps sparsity masks; QLoRA after bitsandbytes quantization")
def apply(model: Any, params: DistillParams, ctx: StepContext) -> Any:
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    torch.manual_seed(ctx.seed)
    quantized = bool(_is_quantized(model))
    if quantized and not params.lora:
        raise ValueError("distill: the model is quantized; full fine-tuning cannot update its weights; set lora: true")
    masks = nonzero_masks(model) if params.keep_sparsity and not quantized else {}
    if masks:
        log.info("distill: keeping the zeros of %d sparse layers", len(masks))
    teacher = load_teacher(params, ctx)
    if teacher.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"teacher vocabulary ({teacher.config.vocab_size}) differs from the student's "
                         f"({model.config.vocab_size}); choose a teacher with the same tokenizer")

    if quantized:
        student = _attach_qlora(model, params, ctx)
    elif params.lora:
        from peft import get_peft_model

        student = get_peft_model(model, _lora_config(params))
    else:
        student = model
        student.requires_grad_(True)
    linears = prunable_linears(student)
    hooks = [linears[n].weight.register_hook(lambda g, m=mask: g * m.to(g.dtype))
             for n, mask in masks.items() if n in linears and linears[n].weight.requires_grad]

    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(params.warmup_steps, params.steps // 2), params.steps)
    device = model_device(student)
    batches = _batches(ctx.tokenizer, training_pairs(params, ctx), params, ctx.seed, device)
    want_hidden = params.hidden_weight > 0
    student.train()
    last: dict[str, float] = {}
    progress = tqdm(range(params.steps), desc="distill", leave=False)
    for _ in progress:
        batch = next(batches)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        labels = batch["labels"] if params.ce_weight else None
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=want_hidden, use_cache=False)
        s_out = student(**inputs, labels=labels, output_hidden_states=want_hidden, use_cache=False)
        if not batch["pred_mask"].any():
            raise ValueError(f"distill: no trained token fits in seq_len={params.seq_len} for this batch; "
                             "raise seq_len")
        losses = distill_loss(s_out, t_out, batch["pred_mask"], params)
        if not math.isfinite(losses["total"].item()):
            raise FloatingPointError(f"distill: the loss became {losses['total'].item()}; lower lr")
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
        optimizer.step()
        schedule.step()
        _reapply(linears, masks)
        last = {k: round(v.item(), 4) for k, v in losses.items()}
        progress.set_postfix(last)
    for h in hooks:
        h.remove()
    log.info("distill: %d steps, last losses %s", params.steps, last)
    del teacher, optimizer

    if params.lora and not quantized:
        student = student.merge_and_unload()  # dense again; the merged delta is masked below
        _reapply(prunable_linears(student), masks)
    student.requires_grad_(False)
    student.eval()
    return student


@torch.no_grad()
def _reapply(linears: dict[str, Any], masks: dict[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        if name in linears:
            linears[name].weight.mul_(mask.to(linears[name].weight.dtype))
