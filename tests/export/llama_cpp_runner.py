"""Runs inside `.venv-llama` (llama-cpp-python, built by `make llama`): reads a JSON job on stdin, answers JSON.

Job: {"gguf": path, "prompts": [[ids]], "conversations": [[messages]], "new_tokens": n}. Answer: {"greedy": the n
argmax tokens after each prompt (llama.cpp's own logits, no sampler), "template_ids": the ids llama-cpp-python's
chat completion would feed the model for each conversation (the GGUF's chat template rendered and tokenised the
way `create_chat_completion` does)}.
"""

import json
import sys

import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter


def greedy(llm: Llama, prompt: list[int], new_tokens: int) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    tokens: list[int] = []
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(token)
        llm.eval([token])
    return tokens


def template_ids(llm: Llama, messages: list[dict]) -> list[int]:
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm.detokenize([llm.token_eos()]).decode("utf-8", "replace"),
        bos_token=llm.detokenize([llm.token_bos()]).decode("utf-8", "replace")
        if llm.token_bos() >= 0
        else "",
    )
    result = formatter(messages=messages)
    return list(llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True))


def main() -> None:
    job = json.load(sys.stdin)
    # logits_all: this version keeps the logits in `scores` only then (sampling happens in its sampler).
    llm = Llama(model_path=job["gguf"], n_ctx=512, n_threads=2, logits_all=True, verbose=False, seed=0)
    answer = {
        "greedy": [greedy(llm, prompt, job["new_tokens"]) for prompt in job["prompts"]],
        "template_ids": [template_ids(llm, messages) for messages in job["conversations"]],
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
