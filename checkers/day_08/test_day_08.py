"""Day 08 checker: Tokenizer (encode/decode, special tokens, chat template, streaming decode).

Run: pytest checkers/day_08. The oracle is HF transformers' AutoTokenizer on the same folder.
The tiny model's tokenizer is byte-level with no merges, so every non-ASCII character spans
several tokens: the hardest case for the incremental detokenizer. SmolLM2 tests run when the
model is prepared (`tinyinfer model prepare`).
"""
import functools
import json
import random
import shutil

import pytest

FFFD = "\ufffd"
TEXTS = {
    "ascii": "Hello, world! The quick brown fox.",
    "whitespace": "  two  spaces\n\n\ttab and trailing   ",
    "digits": "3.14159 and 1,000,000 -- 2024-05-01",
    "combining": "café, cafe\u0301, Zoë, n\u0303, a\u0308\u0301",
    "cjk": "日本語のテキスト、中文文本，한국어 텍스트",
    "emoji": "👋🏽 👩‍👩‍👧‍👦 🇯🇵 ❤️ 🫠!",
    "scripts": "Ελληνικά русский עברית العربية हिन्दी क्षि",
    "specials": "<|im_start|>user\nhi 👋<|im_end|>\n<|im_start|>assistant\n",
    "symbols": "Code: `x = 1 # ünïcödé` → ✓ ∑ ∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "empty": "",
}
CHATS = {
    "one_user": [{"role": "user", "content": "What is 2 + 2?"}],
    "with_system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 👋"},
                    {"role": "assistant", "content": "Hello! 日本語?"}, {"role": "user", "content": "  trailing  \n"}],
}


@functools.lru_cache(maxsize=None)
def hf_tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def model_dir(request):
    return request.getfixturevalue("tiny_model" if request.param == "tiny" else "smollm2")


@functools.lru_cache(maxsize=None)
def tokenizer(day, model_dir):
    """day.Tokenizer(model_dir), built once per folder (made inside each test, so a stub fails there)."""
    return day.Tokenizer(model_dir)


def stream(detok, ids):
    pieces = [detok.push(i) for i in ids]
    for i, p in enumerate(pieces):
        assert isinstance(p, str), f"push() must return a str (the new final text, '' if none), got {type(p).__name__} at token {i}"
    return pieces


# ---- encode / decode / special tokens ---------------------------------------------------------
@pytest.mark.parametrize("name", list(TEXTS))
def test_encode_decode_match_transformers(day, model_dir, name):
    tok = tokenizer(day, model_dir)
    hf, text = hf_tokenizer(model_dir), TEXTS[name]
    for special in (True, False):
        want = hf.encode(text, add_special_tokens=special)
        got = tok.encode(text, add_special_tokens=special)
        assert list(got) == want, f"encode({name!r}, add_special_tokens={special}): {list(got)[:12]}..., expected {want[:12]}..."
    ids = hf.encode(text)
    for skip in (True, False):
        got, want = tok.decode(ids, skip_special_tokens=skip), hf.decode(ids, skip_special_tokens=skip)
        assert got == want, f"decode(encode({name!r}), skip_special_tokens={skip}) = {got!r}, expected {want!r}"


def test_special_token_ids(day, model_dir):
    tok = tokenizer(day, model_dir)
    hf = hf_tokenizer(model_dir)
    assert tok.bos_token_id == hf.bos_token_id, f"bos_token_id {tok.bos_token_id}, expected {hf.bos_token_id}"
    eos = json.loads((model_dir / "generation_config.json").read_text())["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    assert list(tok.eos_token_ids) == eos, f"eos_token_ids {tok.eos_token_ids}, generation_config.json says {eos}"
    assert tok.vocab_size == len(hf), f"vocab_size {tok.vocab_size}, expected {len(hf)} (count the added special tokens)"


def tokenizer_dir(tmp_path, tiny_model, config_changes=None, generation=None, post_bos=False):
    """A copy of the tiny tokenizer with tokenizer_config.json / generation_config.json edited."""
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(tiny_model / "tokenizer.json", d / "tokenizer.json")
    if post_bos:  # Llama-style: the tokenizer itself prepends BOS when add_special_tokens=True
        from tokenizers import Tokenizer as Fast, processors
        fast = Fast.from_file(str(d / "tokenizer.json"))
        fast.post_processor = processors.TemplateProcessing(
            single="<|im_start|> $A", pair="<|im_start|> $A $B", special_tokens=[("<|im_start|>", 1)])
        fast.save(str(d / "tokenizer.json"))
    cfg = json.loads((tiny_model / "tokenizer_config.json").read_text())
    cfg.update(config_changes or {})
    (d / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not ...}))
    if generation is not None:
        (d / "generation_config.json").write_text(json.dumps(generation))
    return d


def token_id(tiny_model, token):
    from tokenizers import Tokenizer as Fast
    return Fast.from_file(str(tiny_model / "tokenizer.json")).token_to_id(token)


def added_token(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False, "special": True}


def test_special_tokens_written_as_objects_and_no_generation_config(day, tmp_path, tiny_model):
    """Older tokenizer_config.json files store {"content": ...}; without generation_config.json
    the EOS is the tokenizer's eos_token."""
    d = tokenizer_dir(tmp_path, tiny_model, {"bos_token": added_token("<|endoftext|>"),
                                             "eos_token": added_token("<|im_end|>")})
    t = day.Tokenizer(d)
    assert t.bos_token_id == token_id(tiny_model, "<|endoftext|>"), f"bos_token_id {t.bos_token_id}"
    assert list(t.eos_token_ids) == [token_id(tiny_model, "<|im_end|>")], f"eos_token_ids {t.eos_token_ids}"


def test_several_eos_ids(day, tmp_path, tiny_model):
    """Llama-3 instruct models stop on any of several ids (generation_config.json eos list)."""
    d = tokenizer_dir(tmp_path, tiny_model, generation={"bos_token_id": 1, "eos_token_id": [2, 0]})
    assert list(day.Tokenizer(d).eos_token_ids) == [2, 0]


def test_add_special_tokens_reaches_the_post_processor(day, tmp_path, tiny_model):
    """A Llama-style tokenizer.json adds BOS itself: only when add_special_tokens=True."""
    d = tokenizer_dir(tmp_path, tiny_model, post_bos=True)
    t, hf = day.Tokenizer(d), hf_tokenizer(d)
    for special in (True, False):
        for text in ("hi", "日本"):
            want = hf.encode(text, add_special_tokens=special)
            assert list(t.encode(text, add_special_tokens=special)) == want, \
                f"encode({text!r}, add_special_tokens={special}), expected {want}"


# ---- chat template ---------------------------------------------------------------------------
@pytest.mark.parametrize("chat", list(CHATS))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_matches_transformers(day, model_dir, chat, generation_prompt):
    tok = tokenizer(day, model_dir)
    want = hf_tokenizer(model_dir).apply_chat_template(CHATS[chat], tokenize=False,
                                                       add_generation_prompt=generation_prompt)
    got = tok.apply_chat_template(CHATS[chat], add_generation_prompt=generation_prompt)
    assert got == want, f"apply_chat_template({chat}, add_generation_prompt={generation_prompt}):\n{got!r}\nexpected\n{want!r}"


# Block tags on their own indented lines: only trim_blocks + lstrip_blocks (as HF sets them) give clean text.
INDENTED_TEMPLATE = """{% for message in messages %}
  {% if message['role'] == 'system' %}
[SYS] {{ message['content'] }}
  {% else %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}<|im_end|>
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""
# Llama-3 style: whitespace control, bos_token, raise_exception, loop controls.
LLAMA_STYLE_TEMPLATE = """{{- bos_token }}
{%- for message in messages %}
    {%- if message['role'] not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('unknown role ' + message['role']) }}
    {%- endif %}
    {%- if loop.index0 >= 8 %}{% break %}{% endif %}
    {{- '<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}"""


@pytest.mark.parametrize("template", [INDENTED_TEMPLATE, LLAMA_STYLE_TEMPLATE], ids=["indented", "llama_style"])
def test_chat_template_jinja_settings(day, tmp_path, tiny_model, template):
    d = tokenizer_dir(tmp_path, tiny_model, {"chat_template": template})
    t, hf = day.Tokenizer(d), hf_tokenizer(d)
    for chat in CHATS.values():
        for gp in (True, False):
            want = hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=gp)
            got = t.apply_chat_template(chat, add_generation_prompt=gp)
            assert got == want, f"{got!r}\nexpected\n{want!r}\n(jinja2: trim_blocks=True, lstrip_blocks=True; pass bos_token)"


def test_template_can_reject_a_conversation(day, tmp_path, tiny_model):
    """Templates call raise_exception(msg): provide it, so the error says what is wrong."""
    d = tokenizer_dir(tmp_path, tiny_model, {"chat_template": LLAMA_STYLE_TEMPLATE})
    with pytest.raises(Exception, match="unknown role tool"):
        day.Tokenizer(d).apply_chat_template([{"role": "tool", "content": "42"}])


def test_no_chat_template_raises_value_error(day, tmp_path, tiny_model):
    d = tokenizer_dir(tmp_path, tiny_model, {"chat_template": ...})
    with pytest.raises(ValueError):
        day.Tokenizer(d).apply_chat_template(CHATS["one_user"])


# ---- a chat template is code from the model folder ------------------------------------------------
# Known ways out of a jinja2 template into Python, each trying to run a shell command (touch FILE)
# or to print interpreter internals. Plain jinja2.Environment runs them all.
HOSTILE = {
    "cycler_globals": "{{ cycler.__init__.__globals__.os.system(CMD) }}",
    "joiner_globals": "{{ joiner.__init__.__globals__.os.system(CMD) }}",
    "namespace_globals": "{{ namespace.__init__.__globals__.os.system(CMD) }}",
    "lipsum_globals": "{{ lipsum.__globals__['os'].system(CMD) }}",
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "format_string": "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "mutate_messages": "{{ messages.append({'role': 'system', 'content': 'injected'}) }}",
    # these four render as '' in a plain sandbox: the unsafe access must raise instead
    "attr_filter": "{{ (cycler|attr('__init__')|attr('__globals__')).os.system(CMD) }}",
    "format_map": "{{ '{x.__class__}'.format_map({'x': messages}) }}",
    "template_reference_context": "{{ self._TemplateReference__context }}",
    "helper_globals": "{{ raise_exception.__globals__ }}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_chat_template_raises_and_runs_nothing(day, tmp_path, tiny_model, name):
    marker = tmp_path / "template-ran-a-command"
    template = HOSTILE[name].replace("CMD", f"'touch {marker}'")
    d = tokenizer_dir(tmp_path, tiny_model, {"chat_template": template})
    try:
        got = day.Tokenizer(d).apply_chat_template(CHATS["one_user"])
    except NotImplementedError:
        raise
    except Exception:  # noqa: BLE001 -- any error is right: the CLI prints it as one line
        assert not marker.exists(), "the template ran a shell command: render in jinja2.sandbox"
        return
    assert not marker.exists(), "the template ran a shell command: render in jinja2.sandbox"
    pytest.fail(f"a hostile template ({name}) rendered {got!r}: use ImmutableSandboxedEnvironment, and make an "
                "unsafe attribute raise (override unsafe_undefined to raise SecurityError), not render as ''")


def test_chat_template_must_be_a_string(day, tmp_path, tiny_model):
    d = tokenizer_dir(tmp_path, tiny_model, {"chat_template": [{"name": "default", "template": "x"}]})
    with pytest.raises(ValueError, match="chat_template"):
        day.Tokenizer(d).apply_chat_template(CHATS["one_user"])


@pytest.mark.parametrize("file,content", [("tokenizer.json", b"not a tokenizer"), ("tokenizer.json", None),
                                          ("tokenizer_config.json", b"{"), ("tokenizer_config.json", b"[]")],
                         ids=["tokenizer_garbage", "tokenizer_missing", "config_not_json", "config_a_list"])
def test_bad_tokenizer_files_raise_value_error_naming_the_file(day, tmp_path, tiny_model, file, content):
    d = tokenizer_dir(tmp_path, tiny_model)
    if content is None:
        (d / file).unlink()
    else:
        (d / file).write_bytes(content)
    with pytest.raises(ValueError) as e:
        day.Tokenizer(d)
    assert file in str(e.value), f"name the file ({file}); got: {e.value}"


# ---- the incremental detokenizer ----------------------------------------------------------------
def assert_stream(tok, ids, skip, what):
    full = tok.decode(ids, skip_special_tokens=skip)
    detok = tok.detokenizer(skip_special_tokens=skip)
    pieces = stream(detok, ids)
    joined = "".join(pieces)
    assert joined == full, f"{what}: the pieces join to {joined!r}, but decode(ids) is {full!r}"
    assert detok.text == full, f"{what}: detokenizer.text is {detok.text!r}, expected {full!r}"
    if FFFD not in full:
        bad = [(i, p) for i, p in enumerate(pieces) if FFFD in p]
        assert not bad, (f"{what}: piece {bad[0][0]} is {bad[0][1]!r}: it shows U+FFFD for a character whose "
                         "bytes have not all arrived -- hold text back while it ends in U+FFFD")
    return pieces


@pytest.mark.parametrize("name", list(TEXTS))
def test_stream_joins_to_decode(day, model_dir, name):
    tok = tokenizer(day, model_dir)
    ids = tok.encode(TEXTS[name])
    for skip in (True, False):
        assert_stream(tok, ids, skip, f"streaming {name!r} (skip_special_tokens={skip})")


@pytest.mark.parametrize("name", ["combining", "cjk", "emoji", "scripts"])
def test_stream_emits_each_character_once_complete(day, tiny_model, name):
    """Byte-level tiny tokenizer: after every token, the text so far is everything decodable --
    not held back longer than the last incomplete character."""
    tok = tokenizer(day, tiny_model)
    ids = tok.encode(TEXTS[name])
    detok = tok.detokenizer()
    for i, token in enumerate(ids):
        detok.push(token)
        ready = tok.decode(ids[:i + 1]).rstrip(FFFD)
        assert detok.text == ready, f"{name!r} after token {i}: text so far {detok.text!r}, expected {ready!r}"


def test_stream_random_tokens_like_an_untrained_model(day, model_dir):
    """Random ids (invalid UTF-8 included, specials included), ending on an ASCII token."""
    tok = tokenizer(day, model_dir)
    period = tok.encode(".", add_special_tokens=False)
    for seed in range(20):
        rng = random.Random(seed)
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randrange(1, 40))] + period
        assert_stream(tok, ids, True, f"random ids (seed {seed})")
        assert_stream(tok, ids, False, f"random ids (seed {seed}, specials kept)")


def test_detokenizers_are_independent(day, model_dir):
    tok = tokenizer(day, model_dir)
    a_ids, b_ids = tok.encode(TEXTS["cjk"]), tok.encode(TEXTS["emoji"])
    a, b = tok.detokenizer(), tok.detokenizer()
    for i in range(max(len(a_ids), len(b_ids))):
        if i < len(a_ids):
            a.push(a_ids[i])
        if i < len(b_ids):
            b.push(b_ids[i])
    assert (a.text, b.text) == (TEXTS["cjk"], TEXTS["emoji"]), "two detokenizers must not share state"


def test_vocab_size_counts_added_tokens_beyond_the_base_vocabulary(day, tmp_path, tiny_model):
    """Chat models add special tokens after the BPE vocabulary (ids past its end): the model's
    embedding has rows for them and sampling can pick them, so vocab_size must count them."""
    from tokenizers import Tokenizer as Fast
    d = tokenizer_dir(tmp_path, tiny_model)
    fast = Fast.from_file(str(d / "tokenizer.json"))
    base = fast.get_vocab_size(with_added_tokens=False)
    fast.add_special_tokens(["<|tool_call|>", "<|tool_result|>"])
    fast.save(str(d / "tokenizer.json"))
    want = len(hf_tokenizer(d))
    assert want == base + 2, f"test setup: expected {base} + 2 tokens, transformers counts {want}"
    got = day.Tokenizer(d).vocab_size
    assert got == want, f"vocab_size {got}, expected {want}: count the added tokens (ids {base} and {base + 1})"
