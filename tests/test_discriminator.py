import copy
import math

import pytest
import torch

from gad.errors import GadError
from gad.training.discriminator import (
    Discriminator,
    DiscriminatorUpdater,
    bradley_terry_loss,
    cross_entropy_loss,
)
from gad.training.gad_trainer import DiscriminatorReward


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


T = [1.0, -0.5]
S = [0.2, 1.5, -1.0]
G = [0, 0, 1]


def test_bradley_terry_loss_and_gradients_match_a_hand_computation():
    t = torch.tensor(T, requires_grad=True)
    s = torch.tensor(S, requires_grad=True)
    loss = bradley_terry_loss(t, s, torch.tensor(G))
    expected = sum(_softplus(-(T[g] - S[i])) for i, g in enumerate(G)) / len(S)
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    loss.backward()
    # d/ds_i softplus(s_i - t_g) = sigmoid(s_i - t_g) / N; the teacher gets minus the sum over its group.
    expected_s = [_sigmoid(S[i] - T[g]) / len(S) for i, g in enumerate(G)]
    expected_t = [-sum(_sigmoid(S[i] - T[g]) for i, gi in enumerate(G) if gi == g) / len(S) for g in range(len(T))]
    assert s.grad.tolist() == pytest.approx(expected_s, rel=1e-6)
    assert t.grad.tolist() == pytest.approx(expected_t, rel=1e-6)


def test_cross_entropy_loss_matches_a_hand_computation():
    loss = cross_entropy_loss(torch.tensor(T), torch.tensor(S), torch.tensor(G))
    expected = sum(_softplus(-T[g]) + _softplus(S[i]) for i, g in enumerate(G)) / len(S)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def discriminator(tiny_model_dir) -> Discriminator:
    return Discriminator.from_pretrained(tiny_model_dir, seed=0)


def _student_sample_text(tokenizer, text: str) -> str:
    """What TRL hands a reward function: generated ids (ending with EOS) decoded without special tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return tokenizer.decode(ids, skip_special_tokens=True)


def test_same_text_gives_the_same_tokens_and_score_for_teacher_and_student(discriminator):
    prompt = [{"role": "user", "content": "Tell me about the moon."}]
    teacher = "Ahoy! The moon be bright and cold, matey. Arr!"
    student = _student_sample_text(discriminator.tokenizer, teacher)
    teacher_batch = discriminator.encode([prompt], [teacher])
    student_batch = discriminator.encode([prompt], [student])
    assert torch.equal(teacher_batch["input_ids"], student_batch["input_ids"])
    end_of_turn = discriminator.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in teacher_batch["input_ids"][0, -2:].tolist()  # both end with the end-of-turn marker

    # The reward path (TRL's conversational completion) scores the sample exactly as the teacher is scored.
    reward = DiscriminatorReward(discriminator, batch_size=4)
    rewards = reward([prompt], [[{"role": "assistant", "content": student}]], teacher_response=[teacher])
    assert rewards[0] == pytest.approx(discriminator.score([prompt], [teacher]).item(), abs=1e-6)


def test_scores_do_not_depend_on_padding_or_batching(discriminator):
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "A much longer question here?"}]]
    responses = ["Short.", "A considerably longer answer with many more words in it."]
    together = discriminator.score(prompts, responses, batch_size=2)
    alone = torch.cat([discriminator.score([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_long_sequences_are_cut_from_the_left_so_the_ending_is_kept(tiny_model_dir):
    short = Discriminator.from_pretrained(tiny_model_dir, max_length=16)
    batch = short.encode([[{"role": "user", "content": "word " * 50}]], ["the answer"])
    assert batch["input_ids"].shape[1] == 16
    assert short.tokenizer.decode(batch["input_ids"][0]).endswith("the answer<|im_end|>\n")


PIRATE = "Ahoy! The {n} be {a}, matey. Arr!"
PLAIN = "A {n} is a {a} thing that people know well."
NOUNS = ["cat", "ship", "tree", "river", "apple", "storm", "castle", "book", "moon", "horse", "lamp", "road"]
ADJS = ["big", "old", "bright", "quiet", "green", "cold"]


def _pairs(nouns):
    prompts, teacher, student = [], [], []
    for i, n in enumerate(nouns):
        a = ADJS[i % len(ADJS)]
        prompts.append([{"role": "user", "content": f"What is a {n}?"}])
        teacher.append(PIRATE.format(n=n, a=a))
        student.append(PLAIN.format(n=n, a=ADJS[(i + 1) % len(ADJS)]))
    return prompts, teacher, student


@pytest.mark.parametrize("top_layers", [None, 1])
def test_discriminator_separates_two_clear_styles_within_a_few_dozen_steps(tiny_model_dir, top_layers):
    disc = Discriminator.from_pretrained(tiny_model_dir, seed=1)
    disc.train_top_layers(top_layers)
    updater = DiscriminatorUpdater(disc, learning_rate=1e-3, max_grad_norm=1.0, batch_size=8)
    train_prompts, train_teacher, train_student = _pairs(NOUNS[:8])
    for _ in range(30):
        updater.step(train_prompts, train_teacher, train_student, list(range(8)))
    held_prompts, held_teacher, held_student = _pairs(NOUNS[8:])
    t = disc.score(held_prompts, held_teacher)
    s = disc.score(held_prompts, held_student)
    assert (t > s).float().mean().item() > 0.9


def test_chunked_update_equals_a_full_batch_update(tiny_model_dir):
    prompts, teacher, student = _pairs(NOUNS[:3])
    student = student + [s.upper() for s in student]  # two samples per prompt
    group = [0, 1, 2, 0, 1, 2]
    chunked = Discriminator.from_pretrained(tiny_model_dir, seed=3)
    full = copy.deepcopy(chunked)

    # Plain SGD makes the parameter change equal to the gradient, so the two gradients are compared directly.
    updater = DiscriminatorUpdater(chunked, learning_rate=1.0, max_grad_norm=None, batch_size=2)
    updater.optimizer = torch.optim.SGD(chunked.parameters(), lr=1.0)
    stats = updater.step(prompts, teacher, student, group)

    optimizer = torch.optim.SGD(full.parameters(), lr=1.0)
    t = full(**full.encode(prompts, teacher))
    s = full(**full.encode([prompts[g] for g in group], student))
    loss = bradley_terry_loss(t, s, torch.tensor(group))
    loss.backward()
    optimizer.step()

    assert stats.loss == pytest.approx(loss.item(), rel=1e-5)
    for (name, a), b in zip(chunked.named_parameters(), full.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_discriminator_with_another_tokenizer_scores_text(tmp_path):
    """A discriminator need not share the student's tokenizer: it re-tokenises the text with its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator([PIRATE.format(n=n, a=a) for n in NOUNS for a in ADJS], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")  # no chat template: a base model
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    disc = Discriminator.from_pretrained(tmp_path)
    prompts, teacher, student = _pairs(NOUNS[:2])
    assert disc.render(prompts[0], teacher[0]).startswith("user: What is a cat?")
    scores = disc.score(prompts, student)
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    assert torch.equal(disc.encode(prompts, teacher)["input_ids"], disc.encode(prompts, list(teacher))["input_ids"])


def test_saved_discriminator_loads_with_plain_transformers(discriminator, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    discriminator.save_pretrained(tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    prompt, response = [{"role": "user", "content": "Hi"}], "Hello there."
    ids = tokenizer(discriminator.render(prompt, response), return_tensors="pt", add_special_tokens=False)
    plain = model(**ids).logits[0, 0].item()
    assert plain == pytest.approx(discriminator.score([prompt], [response]).item(), abs=1e-5)


def test_bad_inputs_fail_with_clear_errors(discriminator, tmp_path):
    with pytest.raises(GadError, match="discriminator model folder not found"):
        Discriminator.from_pretrained(tmp_path / "missing")
    with pytest.raises(GadError, match="unknown discriminator_loss"):
        DiscriminatorUpdater(discriminator, learning_rate=1e-3, loss="hinge")


def test_fused_update_back_propagates_the_reward_graph_and_matches_the_chunked_update(tiny_model_dir):
    prompts, teacher, student = _pairs(NOUNS[:3])
    group = [0, 1, 2]
    chunked = Discriminator.from_pretrained(tiny_model_dir, seed=4)
    fused = copy.deepcopy(chunked)
    sgd = dict(learning_rate=1.0, max_grad_norm=None, batch_size=2)
    a, b = DiscriminatorUpdater(chunked, **sgd), DiscriminatorUpdater(fused, **sgd)
    a.optimizer, b.optimizer = (
        torch.optim.SGD(chunked.parameters(), lr=1.0),
        torch.optim.SGD(fused.parameters(), lr=1.0),
    )

    stats_a = a.step(prompts, teacher, student, group, chunked.score(prompts, student))
    graph = fused.score_with_grad(prompts, student, batch_size=2)
    assert graph.requires_grad
    stats_b = b.step(prompts, teacher, student, group, graph)

    assert stats_a.loss == pytest.approx(stats_b.loss, rel=1e-5)
    assert stats_a.accuracy == stats_b.accuracy
    for (name, x), y in zip(chunked.named_parameters(), fused.parameters(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


@pytest.mark.parametrize("fused", [False, True])
def test_training_only_the_top_layers_matches_full_gradients_there_and_freezes_the_rest(tiny_model_dir, fused):
    prompts, teacher, student = _pairs(NOUNS[:3])
    group = [0, 1, 2]
    full = Discriminator.from_pretrained(tiny_model_dir, seed=5)
    top = copy.deepcopy(full)
    top.train_top_layers(1)
    before = {name: p.detach().clone() for name, p in top.named_parameters()}
    trainable = {name for name, p in top.named_parameters() if p.requires_grad}
    last = len(top.model.model.layers) - 1
    assert trainable
    assert all(f"layers.{last}." in n or "score" in n or n.endswith("model.norm.weight") for n in trainable)
    assert not any("embed_tokens" in n for n in trainable)

    sgd = dict(learning_rate=1.0, max_grad_norm=None, batch_size=2)
    a, b = DiscriminatorUpdater(full, **sgd), DiscriminatorUpdater(top, **sgd)
    a.optimizer = torch.optim.SGD(full.parameters(), lr=1.0)
    b.optimizer = torch.optim.SGD([p for p in top.parameters() if p.requires_grad], lr=1.0)
    assert sum(len(g["params"]) for g in b.optimizer.param_groups) == len(trainable)
    scores = top.score_with_grad(prompts, student, batch_size=2) if fused else None
    b.step(prompts, teacher, student, group, scores)
    a.step(prompts, teacher, student, group)

    # The same gradient as the full update where the parameters train; untouched everywhere else.
    for (name, x), y in zip(top.named_parameters(), full.parameters(), strict=True):
        expected = y if name in trainable else before[name]
        assert torch.allclose(x, expected, atol=1e-6), name
    assert any(not torch.equal(before[n], p) for n, p in top.named_parameters() if n in trainable)


def test_top_layer_count_is_checked(tiny_model_dir):
    disc = Discriminator.from_pretrained(tiny_model_dir)
    layers = len(disc.model.model.layers)
    with pytest.raises(GadError, match=rf"1\.\.{layers}"):
        disc.train_top_layers(layers + 1)
    disc.train_top_layers(None)
    assert all(p.requires_grad for p in disc.parameters())


# -- precision and activation checkpointing: discriminator_bf16, discriminator_activation_checkpointing -------------


def _sgd_step(disc, *pairs, scores=None, batch_size: int = 2) -> DiscriminatorUpdater:
    """One update with plain SGD at lr 1, unclipped: each parameter moves by its gradient, compared directly."""
    updater = DiscriminatorUpdater(disc, learning_rate=1.0, max_grad_norm=None, batch_size=batch_size)
    updater.optimizer = torch.optim.SGD(updater.trainable, lr=1.0)
    updater.step(*pairs, scores)
    return updater


def _two_samples_per_prompt():
    prompts, teacher, student = _pairs(NOUNS[:3])
    return prompts, teacher, student + [s.upper() for s in student], [0, 1, 2, 0, 1, 2]


def test_bf16_computes_in_bf16_and_keeps_fp32_weights_gradients_and_optimizer_states(tiny_model_dir):
    prompts, teacher, student, group = _two_samples_per_prompt()
    fp32 = Discriminator.from_pretrained(tiny_model_dir, seed=6)
    bf16 = copy.deepcopy(fp32)
    bf16.use_bf16()
    seen: list[torch.dtype] = []
    for layer in bf16.model.model.layers:  # what each layer's MLP computes in: the scoring and the update's chunks
        layer.mlp.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    grads: set[torch.dtype] = set()
    for parameter in bf16.parameters():
        parameter.register_post_accumulate_grad_hook(lambda p: grads.add(p.grad.dtype))

    scores = bf16.score(prompts, teacher)
    assert scores.dtype == torch.float32 and seen and set(seen) == {torch.bfloat16}
    assert torch.allclose(scores, fp32.score(prompts, teacher), rtol=0.05, atol=0.02)  # bf16's ~3 digits
    before = {name: p.detach().clone() for name, p in bf16.named_parameters()}
    _sgd_step(bf16, prompts, teacher, student, group)
    _sgd_step(fp32, prompts, teacher, student, group)
    assert grads == {torch.float32} and all(p.dtype == torch.float32 for p in bf16.parameters())
    # The bf16 step's gradient (the parameter change) is the fp32 one up to bf16's rounding.
    for (name, after), reference in zip(bf16.named_parameters(), fp32.parameters(), strict=True):
        step, expected = after - before[name], reference - before[name]
        if expected.abs().max() > 1e-6:  # a parameter the loss moves
            cosine = torch.nn.functional.cosine_similarity(step.flatten(), expected.flatten(), dim=0)
            assert cosine > 0.98, (name, cosine.item())

    adamw = DiscriminatorUpdater(bf16, learning_rate=1e-3, batch_size=2)  # AdamW, as the trainer builds it
    adamw.step(prompts, teacher, student, group)
    states = [value for state in adamw.optimizer.state.values() for value in state.values() if value.dim()]
    assert states and all(value.dtype == torch.float32 for value in states)
    fused = bf16.score_with_grad([prompts[g] for g in group], student)  # the fused path: bf16 inside, fp32 out
    assert fused.dtype == torch.float32 and fused.requires_grad
    bf16.use_bf16(False)
    seen.clear()
    bf16.score(prompts, teacher)
    assert set(seen) == {torch.float32}


@pytest.mark.parametrize(("fused", "top_layers"), [(False, None), (True, 1)])
def test_activation_checkpointing_recomputes_the_layers_and_gives_the_same_gradients(tiny_model_dir, fused, top_layers):
    prompts, teacher, student, group = _two_samples_per_prompt()
    plain = Discriminator.from_pretrained(tiny_model_dir, seed=7)
    plain.train_top_layers(top_layers)
    checkpointed = copy.deepcopy(plain)
    checkpointed.enable_activation_checkpointing()
    assert checkpointed.model.is_activation_checkpointing and not plain.model.is_activation_checkpointing
    calls = {"plain": 0, "checkpointed": 0}
    for name, disc in (("plain", plain), ("checkpointed", checkpointed)):
        # Inside the layer, so it runs again when the backward pass recomputes the layer; a pre-hook, since the
        # recomputation stops as soon as it has what the backward pass needs, before the MLP returns.
        mlp = disc.model.model.layers[-1].mlp

        def count(module, args, name=name):
            calls[name] += 1

        mlp.register_forward_pre_hook(count)
    before = {name: p.detach().clone() for name, p in checkpointed.named_parameters()}

    for disc in (plain, checkpointed):
        scores = disc.score_with_grad([prompts[g] for g in group], student, batch_size=2) if fused else None
        _sgd_step(disc, prompts, teacher, student, group, scores=scores)
    # Each chunk that back-propagates (2 teacher + 3 student chunks of 2 sequences, or the fused graph's 3 student
    # chunks and 2 teacher ones) runs the layer once more.
    assert calls["checkpointed"] == calls["plain"] + 5
    for (name, x), y in zip(checkpointed.named_parameters(), plain.parameters(), strict=True):
        assert torch.allclose(x, y, rtol=0, atol=1e-6), name
    assert any(not torch.equal(before[name], p) for name, p in checkpointed.named_parameters())
    assert torch.equal(checkpointed.score(prompts, teacher), plain.score(prompts, teacher))  # scoring: as before


def test_checkpointing_is_enabled_before_sharding_and_only_where_the_model_supports_it(tiny_model_dir, monkeypatch):
    from transformers import LlamaForSequenceClassification

    disc = Discriminator.from_pretrained(tiny_model_dir)
    monkeypatch.setattr(LlamaForSequenceClassification, "supports_gradient_checkpointing", False)
    with pytest.raises(GadError, match=r"^discriminator_activation_checkpointing: .* does not support"):
        disc.enable_activation_checkpointing()
    monkeypatch.undo()
    monkeypatch.setattr("gad.training.discriminator._is_fsdp", lambda module: True)
    with pytest.raises(GadError, match="before sharding it"):
        disc.enable_activation_checkpointing()


# -- encoder discriminators (BERT family): [CLS] ... [SEP], the model's own pooling, the position limit -------------


def tiny_bert(folder, max_positions: int = 32):
    """A random 2-layer BERT classifier with a word-level WordPiece vocabulary of this file's texts (no download)."""
    import re

    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    texts = [PIRATE, PLAIN, *NOUNS, *ADJS, "user assistant what is a hi hello there word answer the tell me about"]
    words = sorted({w for text in texts for w in re.findall(r"\w+|[^\w\s]", text.lower())} | {":"})
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    tokenizer = BertTokenizer(vocab=vocab)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=max_positions, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_encoder_discriminator_keeps_cls_and_the_answer_end_within_its_positions(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    disc = Discriminator.from_pretrained(tiny_bert(tmp_path))  # default max_length 4096: over the 32 positions
    assert disc.is_encoder and disc.max_length == 32
    cls, sep = disc.tokenizer.cls_token_id, disc.tokenizer.sep_token_id
    long_prompt = [{"role": "user", "content": "tell me about the cat " * 40}]
    batch = disc.encode([long_prompt, [{"role": "user", "content": "hi"}]], ["the answer", "hello there"])
    ids = batch["input_ids"]
    assert ids.shape == (2, 32)
    assert ids[0, 0] == cls and ids[0, -1] == sep  # [CLS] (pooled) kept, the start of the prompt cut
    assert disc.tokenizer.decode(ids[0, 1:-1]).endswith("assistant : the answer")
    short = ids[1, batch["attention_mask"][1].bool()]
    assert short[0] == cls and short[-1] == sep and batch["attention_mask"][1, -1] == 0  # right padding

    # Scoring a sequence past the position limit works (it used to fail: "expanded size ... must match 32"); the
    # score is the model's own pooled output, as plain transformers computes it on the same truncated text.
    scores = disc.score([long_prompt], ["the answer"])
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, truncation_side="left")
    plain = tokenizer(disc.render(long_prompt, "the answer"), truncation=True, max_length=32, return_tensors="pt")
    assert scores.item() == pytest.approx(model(**plain).logits[0, 0].item(), abs=1e-5)
    # What was cut (the prompt's start) does not matter; the pooled [CLS] sees the rest.
    other_start = [{"role": "user", "content": "what is a ship " * 10 + "tell me about the cat " * 40}]
    assert disc.score([other_start], ["the answer"]).item() == pytest.approx(scores.item(), abs=1e-6)


def test_encoder_scores_do_not_depend_on_padding_or_batching(tmp_path):
    disc = Discriminator.from_pretrained(tiny_bert(tmp_path))
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "tell me about the moon " * 20}]]
    responses = ["hello there", "ahoy! the moon be cold, matey. arr!"]
    together = disc.score(prompts, responses, batch_size=2)
    alone = torch.cat([disc.score([p], [r]) for p, r in zip(prompts, responses, strict=True)])
    assert torch.allclose(together, alone, atol=1e-5)


def test_position_limit_of_decoders_and_of_offset_position_ids(tiny_model_dir):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from gad.training.discriminator import _position_limit

    decoder = Discriminator.from_pretrained(tiny_model_dir)
    assert not decoder.is_encoder and decoder.max_length == decoder.model.config.max_position_embeddings
    assert Discriminator.from_pretrained(tiny_model_dir, max_length=16).max_length == 16  # a smaller one is kept
    roberta = RobertaForSequenceClassification(
        RobertaConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=34, pad_token_id=1, num_labels=1,
        )
    )  # fmt: skip
    assert _position_limit(roberta) == 32  # RoBERTa's position ids start at pad + 1


def _minilm_folder():
    from gad.errors import GadError
    from gad.models import resolve_model

    try:
        return resolve_model("minilm")
    except GadError as err:
        pytest.skip(f"{err} (MiniLM-L6 in a wheel; `make install` installs it)")


def test_real_minilm_discriminator_reads_long_inputs_and_trains(tmp_path):
    """The 22.7M-parameter MiniLM (BERT, WordPiece, 512 positions) as a discriminator, loaded offline."""
    disc = Discriminator.from_pretrained(_minilm_folder(), seed=0)
    assert disc.is_encoder and disc.max_length == 512
    long_prompt = [{"role": "user", "content": "Tell me a long story about the sea. " * 300}]  # ~3000 tokens
    prompts = [long_prompt, [{"role": "user", "content": "What is a cat?"}]]
    teacher = ["Ahoy! The sea be wide, matey. Arr!", "Ahoy! The cat be old, matey. Arr!"]
    student = ["The sea is wide.", "A cat is an old animal."]
    batch = disc.encode(prompts, teacher)
    ids = batch["input_ids"][0]
    assert ids.shape == (512,) and ids[0] == disc.tokenizer.cls_token_id and ids[-1] == disc.tokenizer.sep_token_id
    assert disc.tokenizer.decode(ids[-20:]).endswith("ahoy! the sea be wide, matey. arr! [SEP]")
    before = disc.score(prompts, teacher) - disc.score(prompts, student)
    assert torch.isfinite(before).all()
    updater = DiscriminatorUpdater(disc, learning_rate=1e-4, max_grad_norm=1.0, batch_size=2)
    for _ in range(2):
        updater.step(prompts, teacher, student, [0, 1])
    after = disc.score(prompts, teacher) - disc.score(prompts, student)
    assert (after > before).all(), (before, after)  # the teacher's margin grows, the 512-token pair's included
