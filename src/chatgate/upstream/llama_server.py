"""The local model's child process: llama-cpp-python's OpenAI-compatible server, as chatgate runs it.

Two things before the stock server starts:

- llama.cpp's log messages are written as JSON lines with their level (``local_output.ggml_lines``), so
  that chatgate logs its warnings as warnings (``local_output.OutputRelay`` reads them).
- Gemma 3's chat template is registered under the chat format name ``gemma3``, for the packaged Gemma 3
  270M, whose GGUF carries no ``tokenizer.chat_template`` (llama-cpp-python would fall back to a
  Llama-2 prompt, which Gemma does not understand). ``local.py`` passes ``--chat_format gemma3`` for that
  model only: a GGUF that carries its own template (every other packaged model, and most files given
  in ``local.model_path``) is run with it.
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
    from chatgate.upstream.local_output import ggml_lines

    register_gemma3()
    from llama_cpp.server.__main__ import main as serve

    ggml_lines()
    sys.argv[0] = "llama_cpp.server"
    serve()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
