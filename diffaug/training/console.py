"""Lightning's console notes that say nothing about a diffaug run, silenced by their exact text for one fit.

Each filter names one message and its category or logger; every other warning, Lightning's included, stays.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from lightning.fabric.utilities.warnings import PossibleUserWarning

# Lightning 2.6 advertises its hosted logger through rank_zero_info on every Trainer without one.
_TIP = "💡 Tip: For seamless cloud logging"
# lightning.fabric and lightning.pytorch each point lightning_utilities' rank_zero_info at their own logger.
_TIP_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP)


@contextmanager
def quiet_lightning(env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Inside: no srun hint outside a SLURM job, no litlogger tip, no short-epoch logging hint, no pytree
    deprecation from Lightning, and each of Lightning's lines once.

    The srun hint stays inside a SLURM job (``SLURM_JOB_ID`` set): there, a python command not launched by
    ``srun`` is the mistake it warns about. Outside one it fires merely because ``srun`` is installed.
    """
    env = os.environ if env is None else env
    tip = _DropTip()
    loggers = [logging.getLogger(name) for name in _TIP_LOGGERS]
    # The "lightning" logger has a console handler of its own, and its records also reach the root logger where
    # the application configured one before importing Lightning (train.py's logging.basicConfig): each line
    # twice. Then the application's handler, in its format, prints them alone.
    lightning = logging.getLogger("lightning")
    doubled = list(lightning.handlers) if logging.getLogger().handlers and lightning.propagate else []
    with warnings.catch_warnings():
        if not env.get("SLURM_JOB_ID"):
            warnings.filterwarnings("ignore", message="The `srun` command is available on your system but is "
                                    "not used", category=PossibleUserWarning)
        # A small dataset (k images per class) has fewer batches per epoch than log_every_n_steps. Lightning
        # then says the epoch's logs are lost, but it counts the logging interval in optimizer steps across
        # epochs (LoggerConnector.should_update_logs), and diffaug trains by steps: every interval is logged.
        warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the "
                                "logging interval", category=PossibleUserWarning)
        # torch 2.10 deprecates LeafSpec(); Lightning's CombinedLoader still builds one (torch-side noise only).
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                                category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
        for lg in loggers:
            lg.addFilter(tip)
        for handler in doubled:
            lightning.removeHandler(handler)
        try:
            yield
        finally:
            for lg in loggers:
                lg.removeFilter(tip)
            for handler in doubled:
                lightning.addHandler(handler)
