"""A tiny ChatGLM3 taught, in a few seconds of CPU training, to call the shipped `lookup_drug` tool.

The shared tiny model has random weights, so it never emits a tool call by chance; the tool-calling paths of
the web UI and the API are exercised on this copy, trained to answer a user question with
`lookup_drug\\n{"name": "布洛芬"}`; what it says after the observation is still noise. Everything else
(loading, the chat format, the engine, tool-call parsing) is the real code.
"""

import json
from pathlib import Path

import torch

from wenzhen.models import LoadedModel, load_model
from wenzhen.models.chatglm3 import ROLE_IDS
from wenzhen.safety import SYSTEM_PROMPT
from wenzhen.serve.tools import tool_schemas

CALL_ARGUMENTS = {"name": "布洛芬"}
QUESTIONS = ("胃溃疡能吃布洛芬吗", "你好")


def _targets(loaded: LoadedModel) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) pairs: each question, with the tools in the system turn, answered by the call."""
    call = json.dumps(CALL_ARGUMENTS, ensure_ascii=False)
    answer = loaded.tokenizer.encode(f"lookup_drug\n{call}", add_special_tokens=False)
    pairs = []
    for question in QUESTIONS:
        asked = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        prompt = loaded.family.encode_prompt(loaded.tokenizer, asked, tools=tool_schemas())
        pairs.append((prompt, [*answer, ROLE_IDS["observation"]]))
    return pairs


def build_tool_model(source: Path, out_dir: Path, steps: int = 60) -> Path:
    """Fine-tune a copy of `source` until greedy decoding reproduces the targets; save it to `out_dir`.

    The 65k-row embedding and output matrices stay frozen and torch runs on one thread: on the shared 2-core
    test machine that makes a step ~10x cheaper, and the two transformer layers alone learn the target.
    """
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    loaded = load_model(source, dtype="float32", device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    pairs = _targets(loaded)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "embed_tokens" not in name and "lm_head" not in name
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        for prompt, target in pairs:
            ids = torch.tensor([prompt + target[:-1]])
            hidden = model.model(input_ids=ids).last_hidden_state[0, len(prompt) - 1 :]
            # Only the answer positions go through the 65k-word output layer: the prompt needs no logits.
            loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), torch.tensor(target))
            loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    model.eval()
    torch.set_num_threads(threads)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
