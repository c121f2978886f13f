"""Train the embedded default model ``embedded:tiny-reasoner`` on the synthetic tasks (CPU, seeded).

The model is a small transformers-native ``LlamaForCausalLM`` (grouped-query attention) with a
byte-level BPE tokenizer built from the synthetic corpus in which every integer in -99..199
(with its leading space, e.g. " 12", " -3") is one token; other text falls back to BPE pieces, so
any string can be encoded.  Integer tokens start from a "number line" initialisation (magnitude,
sign and Fourier features), which makes sorting and small arithmetic learnable on a CPU.  It is
trained on the ``train`` split of ``evaluate.tasks.synthetic.TRAINING_TASKS`` in exactly the
prompt format the evaluation renders:

* zero-shot, no definition:  ``f"{question}\\nAnswer:"``
* zero-shot, with definition: ``f"{definition}\\n\\n{question}\\nAnswer:"``
* one-shot (a small share): ``f"{ex.question}\\nAnswer: {ex.target}\\n\\n{question}\\nAnswer:"``
  (optionally preceded by ``f"{definition}\\n\\n"``)

and the completion ``" " + target`` followed by EOS; the loss is masked to the completion and
averaged per example (so one-letter answers weigh as much as long lists).  At the
end it measures held-out greedy accuracy (split ``test``) and writes ``TRAINING.md`` next to the
weights.

Usage::

    python scripts/train_embedded.py --seed 0 --steps 3000
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shlex
import sys
import time
from pathlib import Path

# Passive OpenMP waiting: with busy-waiting, sharing the 2 cores with another process slows
# training ~10x; passive waiting costs ~5% when the cores are free.  Must precede `import torch`.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from tokenizers import (  # noqa: E402
    Regex,
    Tokenizer,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)
from tqdm import tqdm  # noqa: E402
from transformers import (  # noqa: E402
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from evaluate.scoring import score_output  # noqa: E402
from evaluate.tasks.base import TASKS, Item  # noqa: E402
from evaluate.tasks.synthetic import TRAINING_TASKS  # noqa: E402

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
# Pre-tokens: an integer with optional '-' (and its leading space), a word, one punctuation mark,
# or one whitespace.  Integers in NUMBER_RANGE become single tokens; others split into BPE pieces.
# A multiple-choice option "B. 45" (label, period, space, integer in OPTION_RANGE) is one token, so
# each option's label and value share a position (small models cannot learn the label binding
# across positions within the CPU budget).  The same option inside an answer (" B. 45", with its
# leading space) is one token too: the worked answer copies the option whose value it just stated.
PRETOKEN_PATTERN = r" ?[A-D]\. -?[0-9]+| ?-?[0-9]+| ?[A-Za-z]+| ?[^\sA-Za-z0-9]|\s"
NUMBER_RANGE = range(-99, 200)
OPTION_LETTERS = "ABCD"
OPTION_RANGE = range(100)
# Minimal chat template mirroring the plain prompt format: system = definition, user = question.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}{{ message['content'] }}\nAnswer:"
    "{% else %} {{ message['content'] }}{% if loop.last %}{{ eos_token }}{% else %}\n\n{% endif %}"
    "{% endif %}"
    "{% endfor %}"
)
DEFAULT_WEIGHTS = {  # the shipped model's mix (TRAINING.md): most weight where accuracy came last
    "sort8_positive": 1.0,
    "sort8_mixed": 1.0,
    "sort16_positive": 1.2,
    "sort16_mixed": 2.5,
    "synth_arith": 1.3,
    "synth_mc": 3.0,
}


# ------------------------------------------------------------------------------------- prompts


def render_prompt(item: Item, definition: str = "", shots: tuple[Item, ...] = ()) -> str:
    """The evaluation prompt: optional definition, optional exemplars, then the question."""
    parts = [definition] if definition else []
    parts += [f"{ex.question}\nAnswer: {ex.target}" for ex in shots]
    parts.append(f"{item.question}\nAnswer:")
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------------- tokenizer


def build_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the corpus; every integer in NUMBER_RANGE (with leading space) is one token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    numbers = " " + " ".join(str(v) for v in NUMBER_RANGE)
    options = [f"{c}. {v}" for c in OPTION_LETTERS for v in OPTION_RANGE]
    tok.train_from_iterator(corpus + [numbers, "\n".join(options), " " + " ".join(options)] * 50, trainer)
    wanted = [f" {v}" for v in NUMBER_RANGE] + options + [f" {o}" for o in options]
    split = [w for w in wanted if len(tok.encode(w).ids) != 1]
    if split:
        raise RuntimeError(f"vocab too small: {len(split)} numbers/options are not single tokens")
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ---------------------------------------------------------------------------------------- data


class ExampleStream:
    """Endless, seeded stream of length-grouped training batches (input_ids, labels, mask)."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        pools: dict[str, list[Item]],
        weights: dict[str, float],
        batch_size: int,
        rng: random.Random,
        p_definition: float = 0.5,
        p_one_shot: float = 0.08,
        p_no_bos: float = 0.1,
        group: int = 32,
    ) -> None:
        self.tok = tokenizer
        self.pools = pools
        self.names = list(pools)
        self.w = [weights[n] for n in self.names]
        self.bs = batch_size
        self.rng = rng
        self.p_def, self.p_shot, self.p_no_bos = p_definition, p_one_shot, p_no_bos
        self.group = group
        self.queue: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _example(self) -> tuple[list[int], int]:
        name = self.rng.choices(self.names, self.w)[0]
        pool = self.pools[name]
        item = self.rng.choice(pool)
        definition = TASKS[name].definition if self.rng.random() < self.p_def else ""
        shots: tuple[Item, ...] = ()
        if self.rng.random() < self.p_shot:
            ex = self.rng.choice(pool)
            shots = (ex,) if ex.question != item.question else ()
        prompt = self.tok(render_prompt(item, definition, shots))["input_ids"]
        if self.rng.random() < self.p_no_bos:
            prompt = prompt[1:]
        completion = self.tok(" " + item.target, add_special_tokens=False)["input_ids"]
        return prompt + completion + [self.tok.eos_token_id], len(prompt)

    def _refill(self) -> None:
        examples = sorted((self._example() for _ in range(self.bs * self.group)), key=lambda e: len(e[0]))
        batches = []
        for i in range(0, len(examples), self.bs):
            chunk = examples[i : i + self.bs]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), self.tok.pad_token_id, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (seq, n_prompt) in enumerate(chunk):
                ids[r, : len(seq)] = torch.tensor(seq)
                labels[r, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
                mask[r, : len(seq)] = 1
            batches.append((ids, labels, mask))
        self.rng.shuffle(batches)
        self.queue.extend(batches)

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.queue:
            self._refill()
        return self.queue.pop()


# ------------------------------------------------------------------------------- number init

NUMBER_PERIODS = (2, 3, 5, 7, 10, 20, 50, 100, 200, 400)


def number_features(v: int) -> list[float]:
    """Magnitude, sign and Fourier features of an integer (a 'number line' for initialisation)."""
    feats = [v / 100.0, 1.0 if v < 0 else -1.0]
    for period in NUMBER_PERIODS:
        feats += [math.sin(2 * math.pi * v / period), math.cos(2 * math.pi * v / period)]
    return feats


@torch.no_grad()
def init_number_embeddings(model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, scale: float) -> None:
    """Write number features into the first dims of each integer token's input/output embedding.

    A pure initialisation choice (the architecture stays a plain Llama): it gives the model an
    ordered, additive representation of the integers from step 0, which makes sorting,
    comparison and small arithmetic learnable within the CPU budget.
    """
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    n_feat = len(number_features(0))

    def token_id(text: str) -> int | None:
        ids = tok.encode(text, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    for v in NUMBER_RANGE:
        if (i := token_id(f" {v}")) is not None:
            f = torch.tensor(number_features(v))
            emb[i, :n_feat] = f * scale
            head[i, :n_feat] = f * scale
    # Option tokens "B. 45" (in the question) and " B. 45" (copied into the answer): the value's
    # features plus a one-hot label, which the answer letter " B" reads.
    labels = slice(n_feat, n_feat + len(OPTION_LETTERS))
    for k, c in enumerate(OPTION_LETTERS):
        if (i := token_id(f" {c}")) is not None:
            head[i, : labels.stop] = 0.0
            head[i, n_feat + k] = scale
        for v in OPTION_RANGE:
            f = torch.tensor(number_features(v)) * scale
            for text, rows in ((f"{c}. {v}", (emb,)), (f" {c}. {v}", (emb, head))):
                if (i := token_id(text)) is not None:
                    for w in rows:
                        w[i, :n_feat] = f
                        w[i, labels] = 0.0
                        w[i, n_feat + k] = scale


# ------------------------------------------------------------------------------------ evaluate


@torch.no_grad()
def evaluate_accuracy(
    model: LlamaForCausalLM,
    tok: PreTrainedTokenizerFast,
    tasks: tuple[str, ...],
    n: int,
    seed: int,
    with_definition: bool = False,
    batch_size: int = 50,
    verbose: bool = False,
) -> dict[str, float]:
    """Held-out (split "test") greedy exact-match accuracy per task with plain ``generate``."""
    model.eval()
    tok.padding_side = "left"
    acc: dict[str, float] = {}
    samples: dict[str, str] = {}
    for name in tasks:
        spec = TASKS[name]
        items = spec.load(n=n, seed=seed, split="test")
        correct = 0
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            prompts = [render_prompt(it, spec.definition if with_definition else "") for it in chunk]
            enc = tok(prompts, return_tensors="pt", padding=True)
            out = model.generate(
                **enc,
                max_new_tokens=spec.max_new_tokens,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            for it, text in zip(chunk, texts, strict=True):
                correct += score_output(spec, it, text).correct  # the project's own answer parsing
            samples.setdefault(name, f"{chunk[0].gold!r} <- {texts[0]!r}")
        acc[name] = correct / len(items)
    model.train()
    if verbose:
        for name, sample in samples.items():
            tqdm.write(f"  {name}: {sample}")
    return acc


# --------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=4500)
    p.add_argument("--out", type=Path, default=REPO / "evaluate" / "embedded" / "tiny-reasoner")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=768)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=1800)
    p.add_argument("--number-init", type=float, default=0.5, help="scale of number-feature init (0: off)")
    p.add_argument("--weights", default="", help="override task sampling weights: name=w,name=w")
    p.add_argument("--pool-size", type=int, default=40000, help="max unique train items per task")
    p.add_argument("--eval-n", type=int, default=100)
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--monitor-every", type=int, default=0, help="quick held-out check every N steps (0: off)")
    p.add_argument("--monitor-n", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="do not save the model (experiments)")
    p.add_argument("--evaluate-only", action="store_true",
                   help="re-measure the saved model in --out and rewrite TRAINING.md's accuracy table")
    return p.parse_args(argv)


def example_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy averaged over each example's completion, then over the batch.

    Per-example normalisation keeps one-token answers (multiple choice) from being drowned by
    long sorted lists.
    """
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    tok_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(labels.shape)
    mask = (labels != -100).float()
    return ((tok_loss * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to ``min_lr_ratio * lr``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def write_report(
    args: argparse.Namespace,
    argv: list[str],
    config: LlamaConfig,
    n_params: int,
    train_s: float,
    acc: dict[str, float],
    acc_def: dict[str, float],
    vocab: int,
    final_loss: float,
    weights: dict[str, float],
) -> None:
    """TRAINING.md next to the weights."""
    rows = accuracy_table(acc, acc_def)
    cmd = "python scripts/train_embedded.py " + " ".join(shlex.quote(a) for a in argv)
    text = f"""# embedded:tiny-reasoner — training record

Trained by `scripts/train_embedded.py` on the `train` split of the synthetic tasks in
`evaluate/tasks/synthetic.py` (split: `int(sha1(question), 16) % 5 == 0` is test, never trained on).

- command: `{cmd.strip()}`
- seed: {args.seed}
- steps: {args.steps} (batch {args.batch_size}, AdamW lr {args.lr:g}, warmup {args.warmup}, cosine to
  {args.min_lr_ratio:g}x, weight decay {args.weight_decay:g}), final train loss {final_loss:.4f}
- training tasks and sampling weights: {", ".join(f"{n} ({weights[n]:g})" for n in TRAINING_TASKS)}
- architecture: LlamaForCausalLM, hidden {config.hidden_size}, intermediate {config.intermediate_size},
  {config.num_hidden_layers} layers, {config.num_attention_heads} attention heads /
  {config.num_key_value_heads} KV heads (head dim {config.hidden_size // config.num_attention_heads}),
  max positions {config.max_position_embeddings}, untied embeddings, float32 weights
- tokenizer: byte-level BPE, {vocab} tokens; every integer in {NUMBER_RANGE.start}..{NUMBER_RANGE.stop - 1} with its
  leading space (" 12", " -3") is one token, other numbers/text fall back to BPE pieces; template
  words are single tokens; a multiple-choice option "B. 45" (letter A-D, integer 0..99) is one
  token, and so is the same option with a leading space (" B. 45"), which the worked answer copies;
  `<s>` is prepended by the tokenizer; `padding_side` left
- initialisation: integer tokens' input and output embeddings start with number features
  (value/100, sign, sin/cos at periods {", ".join(map(str, NUMBER_PERIODS))}) x {args.number_init:g};
  option tokens (both kinds) get their value's features plus a one-hot label read by the answer
  tokens " A".." D"; the copied option (" B. 45") carries the same features in its output embedding
- loss: cross-entropy on the completion tokens only, averaged per example, then per batch
- parameters: {n_params:,}
- training wall-clock: {train_s / 60:.1f} min on a 2-core CPU (torch threads {args.threads})

## Prompt format

- zero-shot: `"{{question}}\\nAnswer:"`; with definition: `"{{definition}}\\n\\n{{question}}\\nAnswer:"`
- completion: `" " + target` then `</s>`; greedy decoding, stop at `\\n` or `</s>`
- trained with the definition in ~50% of examples and a 1-shot exemplar
  (`"{{ex.question}}\\nAnswer: {{ex.target}}\\n\\n"` before the question) in ~8%

## Held-out greedy accuracy (split `test`, {args.eval_n} items per task, seed {args.eval_seed})

| task | zero-shot | zero-shot + definition |
|---|---|---|
{rows}
"""
    (args.out / "TRAINING.md").write_text(text)


def accuracy_table(acc: dict[str, float], acc_def: dict[str, float]) -> str:
    return "\n".join(f"| {name} | {acc[name]:.2f} | {acc_def[name]:.2f} |" for name in acc)


def reevaluate(args: argparse.Namespace) -> None:
    """Held-out accuracy of the saved model, measured again; TRAINING.md's table is replaced."""
    tok = PreTrainedTokenizerFast.from_pretrained(args.out)
    model = LlamaForCausalLM.from_pretrained(args.out)
    acc = evaluate_accuracy(model, tok, TRAINING_TASKS, args.eval_n, args.eval_seed)
    acc_def = evaluate_accuracy(model, tok, TRAINING_TASKS, args.eval_n, args.eval_seed, with_definition=True)
    report = args.out / "TRAINING.md"
    head, sep, _ = report.read_text().partition("| task | zero-shot | zero-shot + definition |")
    report.write_text(head + sep + "\n|---|---|---|\n" + accuracy_table(acc, acc_def) + "\n")
    print(accuracy_table(acc, acc_def))


def main(argv: list[str] | None = None) -> None:
    """Build tokenizer and model, train, evaluate held-out accuracy, save."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.evaluate_only:
        reevaluate(args)
        return
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    # Training pools: train split only (the loaders guarantee it), seeds derived from --seed.
    weights = dict(DEFAULT_WEIGHTS)
    for spec in filter(None, args.weights.split(",")):
        name, w = spec.split("=")
        weights[name] = float(w)
    train_tasks = tuple(n for n in TRAINING_TASKS if weights[n] > 0)
    per_task = {n: weights[n] / sum(weights.values()) for n in TRAINING_TASKS}
    pools = {
        name: TASKS[name].load(
            n=min(args.pool_size, int(args.steps * args.batch_size * per_task[name]) + 2000),
            seed=10_000 + args.seed,
            split="train",
        )
        for name in TRAINING_TASKS
    }
    corpus = []
    for name, pool in pools.items():
        for it in pool[:2000]:
            corpus.append(f"{TASKS[name].definition}\n\n{it.question}\nAnswer: {it.target}")
    tok = build_tokenizer(corpus, args.vocab_size)

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(config)
    if args.number_init:
        init_number_embeddings(model, tok, args.number_init)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(tok)}, params {n_params:,}", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    stream = ExampleStream(tok, {n: pools[n] for n in train_tasks}, weights, args.batch_size, rng)

    model.train()
    t0 = time.time()
    ema = None
    bar = tqdm(range(args.steps), desc="train", mininterval=5)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        ids, labels, mask = stream.next()
        loss = example_mean_loss(model(input_ids=ids, attention_mask=mask).logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        bar.set_postfix(loss=f"{ema:.4f}", lr=f"{lr_at(step, args):.2e}")
        if args.monitor_every and (step + 1) % args.monitor_every == 0 and step + 1 < args.steps:
            acc = evaluate_accuracy(model, tok, train_tasks, args.monitor_n, seed=4321, verbose=True)
            tqdm.write(f"step {step + 1} loss {ema:.4f} " + " ".join(f"{k}={v:.2f}" for k, v in acc.items()))
    train_s = time.time() - t0

    acc = evaluate_accuracy(model, tok, TRAINING_TASKS, args.eval_n, args.eval_seed)
    acc_def = evaluate_accuracy(model, tok, TRAINING_TASKS, args.eval_n, args.eval_seed, with_definition=True)
    print(f"trained {train_s / 60:.1f} min; held-out accuracy:")
    for name in TRAINING_TASKS:
        print(f"  {name:16s} {acc[name]:.2f}  (with definition {acc_def[name]:.2f})")
    if args.no_write:
        return

    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        do_sample=False,
        max_new_tokens=128,
    )
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    write_report(args, argv, config, n_params, train_s, acc, acc_def, len(tok), ema or float("nan"), weights)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
