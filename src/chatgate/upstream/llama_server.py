"""The local model's child process: llama-cpp-python's OpenAI-compatible server, with Gemma 3's template.

The bundled GGUF carries no ``tokenizer.chat_template``, and llama-cpp-python would then fall
back to a Llama-2 prompt, which Gemma does not understand. So this entry point registers
Gemma 3's own chat template (``gemma3_chat_template.jinja``, as published with the
instruction-tuned Gemma 3 models) under the chat format name ``gemma3`` and then runs the
stock server, started by ``local.py`` with ``--chat_format gemma3``. A GGUF that carries its
own template needs none of this: ``local.py`` then leaves ``--chat_format`` out.
"""

from __future__ import annotations

import sys
from importlib.resources import files

CHAT_FORMAT = "gemma3"


def gemma3_template() -> str:
    return files("chatgate.upstream").joinpath("gemma3_chat_template.jinja").read_text()


def register_gemma3() -> None:
    from llama_cpp import llama_chat_format

    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=gemma3_template(), eos_token="<end_of_turn>", bos_token="<bos>"
    )
    llama_chat_format.LlamaChatCompletionHandlerRegistry().register_chat_completion_handler(  # type: ignore[no-untyped-call]
        CHAT_FORMAT, formatter.to_chat_handler(), overwrite=True
    )


def main() -> None:
    register_gemma3()
    from llama_cpp.server.__main__ import main as serve

    sys.argv[0] = "llama_cpp.server"
    serve()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
