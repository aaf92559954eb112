"""Resuming an interrupted `scalpel prune`: the run's state after every finished round, in one file.

Pruning is hours of retraining on big models; a run that is stopped (Ctrl-C, a lost machine)
should not start over. `prune_onnx` saves its state here after training and after every round
(the model, the loop's masks, steps and kept states, the retraining seed reached), and the same
command run again goes on from the last finished round. The file names the run's settings and
model; a checkpoint of a different run is refused, not silently mixed in. It is removed when the
run completes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import ScalpelError


def model_digest(model) -> str:
    return hashlib.sha256(model.SerializeToString()).hexdigest()


class Checkpoint:
    """The state of one pruning run at `path`; `restart` ignores (and later replaces) an old one."""

    def __init__(self, path, settings: dict, *, restart: bool = False):
        self.path, self.settings, self.state = Path(path), settings, {}
        if self.path.exists() and not restart:
            self.state = self._load()

    def _load(self) -> dict:
        import torch

        try:
            saved = torch.load(self.path, weights_only=False)
        except Exception as err:  # a truncated or foreign file: say which, and the way out
            raise ScalpelError(f"{self.path} is not a readable pruning checkpoint ({type(err).__name__}: {err}); "
                               "delete it, or pass --restart to start over") from None
        if not isinstance(saved, dict) or "settings" not in saved:
            raise ScalpelError(f"{self.path} is not a pruning checkpoint; delete it, or pass --restart")
        old = saved["settings"]
        differ = sorted(key for key in set(old) | set(self.settings) if old.get(key) != self.settings.get(key))
        if differ:
            raise ScalpelError(f"{self.path} is the checkpoint of a different run ({', '.join(differ)} differ); "
                               "run with the same settings to resume, or pass --restart to start over")
        return saved

    @property
    def resuming(self) -> bool:
        return bool(self.state)

    def get(self, key, default=None):
        return self.state.get(key, default)

    def save(self, **parts) -> None:
        """Merge `parts` into the state and write it atomically (a crash mid-write keeps the last one)."""
        import torch

        self.state.update(parts, settings=self.settings)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        torch.save(self.state, partial)
        os.replace(partial, self.path)

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


class NoCheckpoint:
    """The stand-in when a run keeps no checkpoint."""

    resuming = False

    def get(self, key, default=None):
        return default

    def save(self, **parts) -> None:
        pass

    def finish(self) -> None:
        pass
