"""The training loop: Adam on MSE, as the reference trains, with a validation fold for
early stopping (the reference's k-fold with one fixed fold), seeded, on the CPU."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from edged_cloud.train.model import autoencoder


@dataclass
class FitOptions:
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    dropout: float = 0.001  # the workshop's dropout_rate
    patience: int = 5  # epochs without a better validation loss before stopping
    validation: float = 1 / 6  # one fold of the reference's six
    seed: int = 0
    threads: int | None = None


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False


@contextmanager
def progress(total: int, enabled: bool | None = None) -> Iterator[Callable[[str], None]]:
    """A per-epoch progress bar on a terminal: tqdm when installed, else one line
    rewritten in place; nothing when stderr is not a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda _text: None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, unit="epoch", file=sys.stderr)
        try:
            yield lambda text: (bar.set_postfix_str(text), bar.update(1))
        finally:
            bar.close()
        return
    done = [0]

    def step(text: str) -> None:
        done[0] += 1
        filled = 30 * done[0] // total
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done[0]}/{total} {text}")
        sys.stderr.flush()

    try:
        yield step
    finally:
        sys.stderr.write("\n")


def fit(windows: np.ndarray, options: FitOptions, *, show_progress: bool | None = None):
    """Train on ``windows`` (n, 6, 10, 10) float32; the best model by validation loss
    (in eval mode) and the history."""
    import torch

    torch.manual_seed(options.seed)
    if options.threads:
        torch.set_num_threads(options.threads)
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(len(windows))
    n_val = max(1, int(round(len(windows) * options.validation))) if len(windows) > 1 else 0
    val = torch.from_numpy(windows[order[:n_val]])
    train = torch.from_numpy(windows[order[n_val:]])
    model = autoencoder(options.dropout)
    optimiser = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    loss_fn = torch.nn.MSELoss()
    generator = torch.Generator().manual_seed(options.seed)
    history = History()
    best = float("inf")
    best_state = None
    waited = 0
    with progress(options.epochs, show_progress) as step:
        for epoch in range(options.epochs):
            model.train()
            total = 0.0
            for index in torch.randperm(len(train), generator=generator).split(
                    options.batch_size):
                batch = train[index]
                optimiser.zero_grad()
                loss = loss_fn(model(batch), batch)
                loss.backward()
                optimiser.step()
                total += loss.item() * len(batch)
            history.train_loss.append(total / len(train))
            model.eval()
            with torch.inference_mode():
                monitored = val if len(val) else train
                val_loss = float(loss_fn(model(monitored), monitored))
            history.val_loss.append(val_loss)
            step(f"loss {history.train_loss[-1]:.4f} val {val_loss:.4f}")
            if val_loss < best:
                best, waited, history.best_epoch = val_loss, 0, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            else:
                waited += 1
                if options.patience and waited >= options.patience:
                    history.stopped_early = epoch + 1 < options.epochs
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), history
