"""The one channel through which a long job (``auto``, ``demo``) tells the user what it is doing.

Messages are lines on stderr (stdout carries the result). Quiet means silent: no messages, no
progress bars (huggingface_hub's and the crawler's), no log records below ERROR and no Python
warnings while the job runs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Reporter:
    quiet: bool = False

    @property
    def progress(self) -> bool:
        """Whether progress bars may be drawn."""
        return not self.quiet

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)

    def warn(self, msg: str) -> None:
        self.say(f"warning: {msg}")

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """While the job runs: quiet silences bars, log records and warnings; all restored afterwards."""
        if not self.quiet:
            yield
            return
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        bars_were_off, level = are_progress_bars_disabled(), logging.root.manager.disable
        disable_progress_bars()
        logging.disable(logging.WARNING)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield
        finally:
            logging.disable(level)
            if not bars_were_off:
                enable_progress_bars()
