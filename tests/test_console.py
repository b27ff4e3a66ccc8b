"""What a training run prints: the stages and the results, without Lightning's tips, accelerator lines,
deprecations from inside Lightning or the "modules in eval mode" warning for the student's frozen
teacher; the filters are scoped to the run."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from s2svr_lightning.console import (
    LIGHTNING_LOGGERS,
    ConsoleFormatter,
    ExpectedEvalModules,
    quiet_third_party,
)

# what the console of a run must not show (the lines the demo printed before)
NOISE = [
    re.compile(r"💡|Tip: "),
    re.compile(r"(GPU|TPU) available"),
    re.compile(r"module\(s\) in eval mode"),
    re.compile(r"LeafSpec|is deprecated"),
    re.compile(r"`Trainer\.fit` stopped"),
    re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[", re.M),  # Hydra's time-stamped prefix on the console
]

TINY_DEMO = [
    "+task=demo",
    "debug=fast",
    "++model.overrides={channels: 8, num_blocks: 1, num_layers: 1}",
    "dataset.train_sequences=2",
    "dataset.val_sequences=1",
    "dataset.test_sequences=1",
    "dataset.frames=4",
    "data.num_frames=3",
]


def _warned(action, scope=contextlib.nullcontext) -> list[str]:
    """The messages of the warnings ``action`` raises inside ``scope()``, whose filters go in front of a
    catch-all "always"."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with scope():
            action()
    return [str(w.message) for w in caught]


def _lightning_says(message: str) -> None:
    logging.getLogger(LIGHTNING_LOGGERS[0]).info(message)


def _warnings_from(*sources: tuple[str, type[Warning], str]):
    def action() -> None:
        for message, category, module in sources:
            warnings.warn_explicit(message, category, f"{module}.py", 1, module=module)

    return action


SOURCES = (
    ("old torch API", FutureWarning, "lightning.pytorch.utilities._pytree"),
    ("old API", DeprecationWarning, "pytorch_lightning.x"),
    ("our deprecation", FutureWarning, "s2svr_lightning.z"),
    ("a Lightning hint", UserWarning, "lightning.pytorch.w"),
)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_quiet_third_party_drops_lightnings_noise_and_keeps_the_rest(monkeypatch, request):
    # a handler on Lightning's logger itself, enabled: an earlier Hydra run in the same test process
    # configures logging with disable_existing_loggers, which disables it (and caplog hears nothing)
    logger = logging.getLogger(LIGHTNING_LOGGERS[0])
    records = _Records()
    # setLevel, not a patched attribute: it also clears the loggers' isEnabledFor caches, which otherwise
    # keep the answer an earlier test's level gave (INFO off) and drop every record here
    monkeypatch.setattr(logger, "disabled", False)
    request.addfinalizer(lambda level=logger.level: logger.setLevel(level))
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    filters_before = list(warnings.filters)
    try:
        with quiet_third_party():
            _lightning_says("💡 Tip: For seamless cloud logging, try installing a product")
            _lightning_says("GPU available: False, used: False")
            _lightning_says("TPU available: False, using: 0 TPU cores")
            _lightning_says("`Trainer.fit` stopped: `max_steps=5` reached.")
            _lightning_says("`Trainer.fit` stopped: `max_time=00:01:00` reached.")  # not the expected end
            _lightning_says("Restoring states from the checkpoint path at last.ckpt")
    finally:
        logger.removeHandler(records)
    assert [r.getMessage() for r in records.records] == [
        "`Trainer.fit` stopped: `max_time=00:01:00` reached.",
        "Restoring states from the checkpoint path at last.ckpt",
    ]
    # deprecations from inside Lightning go; ours and Lightning's other warnings stay
    assert _warned(_warnings_from(*SOURCES), quiet_third_party) == ["our deprecation", "a Lightning hint"]
    # everything is put back
    assert warnings.filters == filters_before
    assert all(not lg.filters for lg in map(logging.getLogger, LIGHTNING_LOGGERS))
    logger.addHandler(records)
    records.records.clear()
    try:
        _lightning_says("GPU available: False, used: False")
    finally:
        logger.removeHandler(records)
    assert [r.getMessage() for r in records.records] == ["GPU available: False, used: False"]
    assert len(_warned(_warnings_from(*SOURCES))) == 4


def test_expected_eval_modules_silences_exactly_that_many():
    def lightning_warns(count: int):
        return lambda: warnings.warn(
            f"Found {count} module(s) in eval mode at the start of training. This may lead to unexpected "
            "behavior during training. If this is intentional, you can ignore this warning.",
            stacklevel=1,
        )

    def expecting(count: int):
        @contextlib.contextmanager
        def scope():
            expected = ExpectedEvalModules()
            expected.start(count)
            try:
                yield
            finally:
                expected.stop()
                expected.stop()  # twice is harmless (on_train_start, then teardown)

        return scope

    before = list(warnings.filters)
    assert _warned(lightning_warns(7), expecting(7)) == []
    assert len(_warned(lightning_warns(8), expecting(7))) == 1  # another module in eval mode still warns
    assert warnings.filters == before
    assert len(_warned(lightning_warns(7))) == 1


def test_console_formatter_shows_the_level_of_warnings_only():
    def record(level: int) -> logging.LogRecord:
        return logging.LogRecord("s2svr_lightning", level, __file__, 1, "the message", None, None)

    formatter = ConsoleFormatter()
    assert formatter.format(record(logging.INFO)) == "the message"
    assert formatter.format(record(logging.WARNING)) == "WARNING: the message"


def test_the_terminal_bar_counts_the_stages_steps_across_epochs(capsys):
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from s2svr_lightning.lit.callbacks import StageProgressBar

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            loss = (self.w - batch[0].mean()).square()
            self.log("train/loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    loader = DataLoader(TensorDataset(torch.randn(4, 1)), batch_size=1)  # 4 steps an epoch
    trainer = L.Trainer(
        max_steps=6,
        callbacks=[StageProgressBar("teacher")],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    with quiet_third_party():
        trainer.fit(Tiny(), loader)
    drawn = capsys.readouterr()
    bar = (drawn.out + drawn.err).replace("\r", "\n")
    assert "[teacher]:" in bar and "6/6" in bar and "step/s" in bar and "train/loss=" in bar
    # one count over both epochs, without Lightning's epoch counter or the logger's version
    assert "/4 " not in bar and "Epoch" not in bar and "v_num" not in bar and "Training" not in bar


@pytest.mark.slow
def test_a_pipeline_run_prints_its_stages_and_table_without_third_party_noise(tmp_path):
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "s2svr_lightning", *TINY_DEMO, f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,  # no terminal: a cluster job's log
        timeout=900,
    )
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    for noise in NOISE:
        assert not noise.search(console), f"{noise.pattern!r} in:\n{console}"
    for number, stage in enumerate(("teacher", "student", "restorer", "test"), 1):
        assert f"[{stage}] stage {number} of 4: " in proc.stdout
    assert "[restorer] step 2/2 (100.0 %)" in proc.stdout
    assert "| stage | metric | S2SVR | reference |" in proc.stdout
    lines = console.strip().splitlines()
    assert len(lines) <= 30, console
    # the run's log file keeps the time stamps that the console leaves out
    (log_file,) = tmp_path.glob("demo/runs/*/__main__.log")
    assert re.search(
        r"^\[\d{4}-\d\d-\d\d [\d:,]+\]\[s2svr_lightning\]\[INFO\] - \[teacher\]", log_file.read_text(), re.M
    )
