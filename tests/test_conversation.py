"""Chat templates and sessions: multi-line templates written the way models ship them (whitespace control,
``set`` / ``macro`` / ``namespace`` blocks, loop controls, ``raise_exception``, ``tojson``) rendered as
transformers' ``apply_chat_template`` renders them; sessions whose template lays out earlier turns
differently from the turn in progress; a conversation that outgrows its context.

The templates are written here after the layouts of ChatML (Qwen2.5), Llama 3, Mistral and DeepSeek-R1 /
Qwen3, not copied: what matters is that they use the constructs real ones use."""

import pytest

import qkv
from qkv import InputError, Tokenizer
from qkv.conversation import ChatSession, render_chat

from serving import TEXT, tiny_gpt

transformers = pytest.importorskip("transformers")

CHATML = """
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- '# Tools\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == 'system' and loop.first %}
        {%- continue %}
    {%- endif %}
    {%- if message.role == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}
            {{- message.content | trim + '<|im_end|>' }}
        {%- endgeneration %}
        {{- '\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3 = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'
        + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL = """
{%- macro turn(role, text) -%}
    {%- if role == 'user' -%}
        {{- '[INST] ' + text + ' [/INST]' -}}
    {%- else -%}
        {{- ' ' + text + eos_token -}}
    {%- endif -%}
{%- endmacro -%}
{%- if messages[0]['role'] == 'system' %}
    {%- set system = messages[0]['content'] + '\\n\\n' %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system = '' %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if loop.first %}
        {{- turn(message['role'], system + message['content']) }}
    {%- else %}
        {{- turn(message['role'], message['content']) }}
    {%- endif %}
{%- endfor %}
"""

# Earlier assistant turns lose their reasoning; the generation prompt opens a <think> block that the stored
# reply does not hold, so every new turn lays out the previous reply differently from the prompt it followed.
REASONING = """
{%- set ns = namespace(last_user=-1) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.last_user = loop.index0 %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {{- message.content + '\\n\\n' }}
    {%- elif message.role == 'user' %}
        {{- '<|User|>' + message.content }}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content %}
        {%- if loop.index0 < ns.last_user and '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|Assistant|>' + content + eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|Assistant|><think>\\n' }}
{%- endif %}
"""

TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL, "reasoning": REASONING}
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "[INST]", "[/INST]", "<|User|>", "<|Assistant|>", "<think>", "</think>"]
EOS = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>", "reasoning": "</s>"}
SYSTEM = "You are terse. Answer in a few words."
CONVERSATIONS = [
    [{"role": "user", "content": "the fox"}],
    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "  the dog ran.  \n"},
     {"role": "assistant", "content": "<think>\nit asks about a dog\n</think>\n\na cat sat on the mat"},
     {"role": "user", "content": "and then?\n\nsay more"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b</think>c"},
     {"role": "user", "content": "d"}, {"role": "assistant", "content": "<think>e</think>f"}],
]
TOOLS = [{"type": "function", "function": {"name": "weather", "description": "Météo d'une ville",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def backend():
    return Tokenizer.train_bpe([TEXT], vocab_size=300, special_tokens=SPECIALS).backend


def _pair(backend, name):
    """(qkv's tokenizer, transformers') over one backend, the template and the special tokens."""
    ours = Tokenizer(backend, {"bos_token": "<s>", "eos_token": EOS[name]}, TEMPLATES[name])
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token=EOS[name])
    theirs.chat_template = TEMPLATES[name]
    return ours, theirs


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
def test_multi_line_templates_render_as_transformers(backend, name, conversation):
    ours, theirs = _pair(backend, name)
    messages = CONVERSATIONS[conversation]
    for gen in (True, False):
        want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert render_chat(ours.chat_template, messages, gen, ours.specials) == want
        want_ids = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=False)
        assert ours.encode(render_chat(ours.chat_template, messages, gen, ours.specials)) == list(want_ids)


def test_tools_render_through_tojson_as_transformers(backend):
    ours, theirs = _pair(backend, "chatml")
    for messages in CONVERSATIONS:
        want = theirs.apply_chat_template(messages, tools=TOOLS, tokenize=False, add_generation_prompt=True)
        assert render_chat(CHATML, messages, specials=ours.specials, tools=TOOLS) == want     # the default: True
        assert "Météo" in want                                    # tojson keeps non-ASCII, as transformers does


def test_special_tokens_the_tokenizer_lacks_render_as_nothing(backend):
    """A template that writes bos_token for a tokenizer without one renders "" there, as transformers does."""
    template = ("{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ unk_token }}|{% if bos_token %}bos{% endif %}"
                + CHATML)
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>")
    for messages in CONVERSATIONS:
        want = theirs.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
        assert render_chat(template, messages, True, {"eos_token": "</s>"}) == want
        assert want.startswith("|</s>|||<|im_start|>")


def test_documents_and_extra_variables_reach_the_template(backend):
    template = ("{%- if tools is none and documents is none %}{{- 'plain\n' }}{%- endif %}"
                "{%- for d in documents or [] %}{{- '<doc>' + d.title + ': ' + d.text + '</doc>\n' }}{%- endfor %}"
                "{%- if enable_thinking is defined and not enable_thinking %}{{- '/no_think\n' }}{%- endif %}" + CHATML)
    _, theirs = _pair(backend, "chatml")
    documents = [{"title": "fox", "text": "quick and brown"}, {"title": "dog", "text": "lazy"}]
    for options in (dict(), dict(documents=documents), dict(documents=documents, enable_thinking=False)):
        want = theirs.apply_chat_template(CONVERSATIONS[1], chat_template=template, tokenize=False, **options)
        assert render_chat(template, CONVERSATIONS[1], False, None, **options) == want
        assert ("<doc>dog: lazy</doc>" in want) == ("documents" in options)
        assert want.startswith("plain") == (not options)
        assert ("/no_think" in want) == ("enable_thinking" in options)


def test_raise_exception_in_a_template_is_an_input_error(backend):
    ours, theirs = _pair(backend, "mistral")
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Exception, match="roles must alternate"):
        theirs.apply_chat_template(twice, tokenize=False)
    with pytest.raises(InputError, match="failed to render: TemplateError: Conversation roles must alternate"):
        render_chat(MISTRAL, twice, True, ours.specials)


@pytest.mark.parametrize("messages, phrase", [
    ([], "^messages must be a non-empty list of {'role': ..., 'content': ...} dicts$"),
    ({"role": "user", "content": "hi"}, "messages must be a non-empty list"),
    ([{"role": "user"}], "message 0 must be a dict with 'role' and 'content', got {'role': 'user'}"),
    ([{"role": "user", "content": "a"}, {"content": "b"}], "message 1 must be a dict with 'role' and 'content'"),
    ([{"role": "user", "content": "a"}, "b"], "message 1 must be a dict"),
    ([{"role": "wizard", "content": "a"}], "message 0 has role 'wizard'; use one of \\['system', 'user'"),
    ([{"role": "user", "content": ["a"]}], "message 0 has list content; content must be a string"),
])
def test_bad_messages_name_the_first_bad_one(messages, phrase):
    with pytest.raises(InputError, match=phrase):
        render_chat(CHATML, messages)


def _model(backend, name, max_len=256):
    ours, _ = _pair(backend, name)
    return tiny_gpt(ours, max_len=max_len, pos="rope")


def _is_prefix(a, b):
    return a == b[:len(a)]


@pytest.mark.parametrize("name", ["reasoning", "chatml"])
def test_a_session_whose_template_relays_earlier_turns_equals_fresh_chats(backend, name):
    """Each reply of a session equals a fresh ``qkv.chat`` of the same messages, and its prompt is
    transformers' tokenization; with the reasoning template the cache holds a layout that the next turn no
    longer renders (the <think> prompt and the reasoning of earlier replies), so part of it is recomputed."""
    model = _model(backend, name)
    _, theirs = _pair(backend, name)
    session = ChatSession(model, system=SYSTEM, context=200)
    session.messages += CONVERSATIONS[1][1:3]                # an earlier turn with reasoning in its reply
    reused = []                                              # does the new prompt keep all of the previous one?
    previous = []
    for text in ["the dog ran", "a cat sat on", "and the mat?"]:
        session.messages.append({"role": "user", "content": text})
        prompt = session.prompt_ids()
        assert prompt == list(theirs.apply_chat_template(session.messages, tokenize=True, add_generation_prompt=True,
                                                         return_dict=False))
        reused.append(_is_prefix(previous, prompt))
        previous = prompt
        reply = "".join(session.respond(temperature=0, max_new_tokens=10))
        assert reply == qkv.chat(model, session.messages[:-1], temperature=0, max_new_tokens=10)
        assert session.messages[-1] == {"role": "assistant", "content": reply}
        assert session.cached_ids == (prompt + model.tokenizer.encode(reply))[:len(session.cached_ids)]
    assert reused == [True, name != "reasoning", name != "reasoning"]


def _prompt(theirs, messages):
    return list(theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))


def _reference(model, messages, **params):
    """The reply as ``qkv.generate`` gives it on the rendered prompt (another code path than the session's)."""
    tok = model.tokenizer
    return qkv.generate(model, tok, render_chat(tok.chat_template, messages, True, tok.specials), **params)


@pytest.mark.parametrize("name, system", [("mistral", SYSTEM), ("chatml", SYSTEM), ("chatml", None)])
def test_context_overflow_keeps_the_most_recent_whole_turns_that_fit(backend, name, system):
    """The oldest user turn goes with the replies to it, so the conversation still opens with a user turn
    (templates such as Mistral's refuse anything else), the system message stays first, and as many of the
    latest turns are kept as fit with the whole reply budget; the last message alone is kept if need be."""
    context, budget = 128, 12
    model = _model(backend, name)
    _, theirs = _pair(backend, name)
    session = ChatSession(model, system=system, context=context)
    head = [{"role": "system", "content": system}] if system else []
    turns, kept = [], []
    texts = ["the quick brown fox jumps", "over the lazy dog", "a cat sat on the mat", "the dog ran", None]
    for text in texts:
        if text is None:             # a message that fits alone but not after the previous turn
            words = TEXT.split()
            text = next(" ".join(words[:n]) for n in range(1, len(words))
                        if len(_prompt(theirs, head + turns[-1] + [{"role": "user", "content": " ".join(words[:n])}]))
                        + budget > context)
        before = len(session.messages)
        reply = "".join(session.say(text, temperature=0, max_new_tokens=budget))
        asked = session.messages[:-1] if session.messages[-1]["role"] == "assistant" else session.messages
        turns.append([{"role": "user", "content": text}])
        k = next((k for k in range(len(turns), 0, -1) if asked == head + sum(turns[-k:], [])), None)
        assert k is not None, asked                            # whole turns, the latest ones, after the system
        assert len(_prompt(theirs, asked)) + budget <= context
        if k < len(turns):                                     # and one turn more would not have fitted
            assert len(_prompt(theirs, head + sum(turns[-k - 1:], []))) + budget > context
            assert session.notices[-1] == (f"dropped the {before + 1 - len(asked)} oldest message(s) to fit the "
                                           f"{context}-token context")
        assert reply == _reference(model, asked, temperature=0, max_new_tokens=budget)
        turns[-1] += session.messages[len(asked):]
        kept.append(k)
    assert kept[-1] == 1 and max(kept) > 1 and any(k < i + 1 for i, k in enumerate(kept[:-1]))


def test_overflow_keeps_the_last_message_whatever_it_is(backend):
    """Two user messages in a row (a reply that was empty), or a tool result last: the last one stays."""
    model = _model(backend, "chatml")
    long = " ".join(TEXT.split()[:60])
    for messages, kept in [([{"role": "user", "content": long}, {"role": "user", "content": "the dog"}], 1),
                           ([{"role": "user", "content": long}, {"role": "assistant", "content": long},
                             {"role": "tool", "content": "sunny"}], 1)]:
        session = ChatSession(model, system=SYSTEM, context=96)
        session.messages += messages
        reply = "".join(session.respond(temperature=0, max_new_tokens=8))
        assert session.messages[:1 + kept] == [{"role": "system", "content": SYSTEM}] + messages[-kept:]
        assert reply == _reference(model, session.messages[:2], temperature=0, max_new_tokens=8)


def test_replies_end_where_qkv_generate_ends_them(backend):
    """Stop strings, an extra end-of-turn id (generation_config.json's eos list), ignore_eos, a config object:
    each session reply equals ``qkv.generate`` on the rendered prompt."""
    ours, _ = _pair(backend, "chatml")
    asked = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "the fox"}]
    ids = qkv.generate(_model(backend, "chatml"), ours, render_chat(CHATML, asked, True, ours.specials),
                       temperature=0, max_new_tokens=12, ignore_eos=True)
    stop_id = ours.encode(ids)[4]
    tok = Tokenizer(backend, ours.specials, CHATML, extra_stop_ids=[stop_id])
    model = tiny_gpt(tok, max_len=256, pos="rope")
    full = _reference(model, asked, temperature=0, max_new_tokens=12, ignore_eos=True)
    for params in (dict(), dict(ignore_eos=True), dict(stop=[full[3:5]]),
                   dict(stop=["zz", full[6:9]], ignore_eos=True)):
        session = ChatSession(model, system=SYSTEM)
        reply = "".join(session.say("the fox", temperature=0, max_new_tokens=12, **params))
        assert reply == _reference(model, asked, temperature=0, max_new_tokens=12, **params), params
        config = qkv.GenerationConfig(temperature=0, max_new_tokens=12, **params)
        assert "".join(ChatSession(model, system=SYSTEM).say("the fox", config)) == reply
        bare = tiny_gpt(tok, max_len=256, pos="rope")
        del bare.tokenizer
        assert qkv.chat(bare, asked, config, tokenizer=tok) == reply
    assert len(_reference(model, asked, temperature=0, max_new_tokens=12)) < len(full)   # the stop id was met


def test_json_schema_in_a_session(backend):
    jsonschema = pytest.importorskip("jsonschema")
    import json
    schema = {"type": "object", "properties": {"pet": {"enum": ["cat", "dog"]}, "ok": {"type": "boolean"},
                                               "n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["pet", "ok", "n"], "additionalProperties": False}
    model = _model(backend, "chatml", max_len=320)
    session = ChatSession(model, system=SYSTEM)
    reply = "".join(session.say("the fox", json_schema=schema, temperature=0, max_new_tokens=200))
    jsonschema.validate(json.loads(reply), schema)
    assert reply == _reference(model, session.messages[:-1], json_schema=schema, temperature=0, max_new_tokens=200)


@pytest.mark.parametrize("name", ["reasoning", "chatml"])
def test_each_turn_computes_only_what_the_cache_does_not_hold(backend, name):
    """The prefill of a turn starts after the longest prefix its prompt shares with the cached tokens (at least
    one token is computed); the cache holds ``context`` positions."""
    model = _model(backend, name)
    _, theirs = _pair(backend, name)
    prefills = []
    model.register_forward_pre_hook(lambda module, args: prefills.append(args[0].shape[1]))
    session = ChatSession(model, system=SYSTEM, context=200)
    for text in ["the dog ran", "a cat sat on", "and the mat?"]:
        cached = list(session.cached_ids)
        prompt = _prompt(theirs, session.messages + [{"role": "user", "content": text}])
        shared = next((i for i, (a, b) in enumerate(zip(cached, prompt)) if a != b), min(len(cached), len(prompt)))
        del prefills[:]
        "".join(session.say(text, temperature=0, max_new_tokens=10))
        assert prefills[0] == len(prompt) - min(shared, len(prompt) - 1)
        assert session.caches[0].k_BGMD.shape[2] == 200
    assert shared > 20                                          # the system message and the earlier turns
    last = session.messages.pop()                               # asked again: all but one token is cached
    del prefills[:]
    assert "".join(session.respond(temperature=0, max_new_tokens=10)) == last["content"]
    assert prefills[0] == 1


def test_context_bounds_and_one_line_refusals(backend):
    model = _model(backend, "chatml", max_len=64)
    for context in (2, 64):
        assert ChatSession(model, context=context).context == context
    for context in (1, 65):
        with pytest.raises(InputError, match=f"context={context} must be between 2 and the model's max_len=64"):
            ChatSession(model, context=context)
    with pytest.raises(InputError, match="a message must be a string, got int"):
        ChatSession(model).say(5)
    bare = tiny_gpt(model.tokenizer, max_len=64)
    del bare.tokenizer
    with pytest.raises(InputError, match="^this model has no chat template \\(tokenizer_config.json's "
                                         "chat_template or the GGUF tokenizer.chat_template\\); use `qkv generate "
                                         "--prompt` for plain continuation$"):
        ChatSession(bare)
    messages = [{"role": "user", "content": "the fox"}]
    n = len(ChatSession(model).prompt_ids(messages))
    with pytest.raises(InputError, match=f"the conversation needs {n} tokens but the context holds {n}"):
        list(ChatSession(model, context=n).say("the fox"))
    session = ChatSession(model, context=n + 5)
    assert session.reply_tokens == 0
    assert len("".join(session.say("the fox", temperature=0, max_new_tokens=5, ignore_eos=True))) > 0
    assert session.notices == [] and session.reply_tokens == 5  # prompt + budget == context: it fits
    session = ChatSession(model, context=n + 1)
    list(session.say("the fox", temperature=0, max_new_tokens=5, ignore_eos=True))
    assert session.notices == ["the reply is limited to 1 tokens by the " + f"{n + 1}-token context"]
    assert session.reply_tokens == 1


def test_a_reply_cut_by_the_context_says_so(backend):
    model = _model(backend, "chatml", max_len=64)
    session = ChatSession(model, system=SYSTEM)
    assert session.context == 64
    prompt = session.prompt_ids(session.messages + [{"role": "user", "content": "the fox"}])
    reply = list(session.say("the fox", temperature=0, max_new_tokens=60, ignore_eos=True))
    assert len(model.tokenizer.encode("".join(reply))) <= 64 - len(prompt)
    assert session.notices == [f"the reply is limited to {64 - len(prompt)} tokens by the 64-token context"]
    with pytest.raises(InputError, match="the conversation needs .* tokens but the context holds 64"):
        list(ChatSession(model, system=SYSTEM).say("the quick brown fox " * 20))
