"""Fault injection shared by the trainer's and the packed trainer's crash-and-resume tests."""

from __future__ import annotations


class Crash(BaseException):
    """Stands for SIGKILL: no handler runs."""


def weights_validate(model):
    """A deterministic stand-in for validation: metrics that move with the weights, every epoch."""
    s = float(sum(p.detach().abs().sum() for p in model.parameters()))
    return {"top1_loc": (s * 10) % 1, "gt_known_loc": (s * 100) % 1, "top1_cls": (s * 1000) % 1}


def inject(monkeypatch, modules, point: str, nth: int, action=None) -> None:
    """Make ``crash_point(point)`` in each of ``modules`` raise :class:`Crash` (or run ``action``) the
    nth time it is reached, counting over all of them."""
    seen = {"n": 0}

    def hook(name):
        if name == point:
            seen["n"] += 1
            if seen["n"] == nth:
                if action is None:
                    raise Crash
                action()

    for mod in modules:
        monkeypatch.setattr(mod, "crash_point", hook)
