"""Context fitting: the window, truncation and the running brief (the pipeline's fit step)."""

from chatgate.context.fit import SUMMARY_PREFIX, ContextFitter, Fitted
from chatgate.context.summarize import Summariser, SummaryFailed, SummaryUsage
from chatgate.context.window import WindowResolver, local_windows, requested_max_tokens

__all__ = [
    "SUMMARY_PREFIX",
    "ContextFitter",
    "Fitted",
    "Summariser",
    "SummaryFailed",
    "SummaryUsage",
    "WindowResolver",
    "local_windows",
    "requested_max_tokens",
]
