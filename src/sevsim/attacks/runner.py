"""Running attacks: one cell, or the whole matrix of attacks by protection level and fix."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from functools import partial

from sevsim.attacks.catalog import ATTACKS
from sevsim.attacks.framework import MODES, Attack, Outcome, Setting, Trace, Verdict
from sevsim.attacks.lab import DEFAULT_SEED, Lab
from sevsim.errors import ConfigError, SevsimError


def attack_named(name: str) -> Attack:
    """The catalog entry with this id ("A5", case-insensitive)."""
    try:
        return ATTACKS[name.upper()]
    except KeyError:
        raise ConfigError(f"no attack {name!r}; `sevsim attack list` names them") from None


def run_attack(attack: Attack, setting: Setting, seed: bytes = DEFAULT_SEED) -> Outcome:
    """Run one attack at one setting and judge it against the victim's ground truth."""
    reason = attack.not_applicable(setting)
    if reason is not None:
        return Outcome(attack.id, setting, Verdict.NOT_APPLICABLE, "", reason, ())
    trace = Trace()
    lab = Lab(setting, trace, seed, flaws=attack.flaws)
    try:
        attempt = attack.attempt(lab)
    except ConfigError:
        raise  # a setting the lab cannot build (a mode the chip lacks) is no verdict
    except SevsimError as stop:
        trace(f"stopped: {stop}")
        return Outcome(attack.id, setting, Verdict.STOPPED, "",
                       f"{type(stop).__name__}: {stop}", tuple(trace.steps))
    shown = render(attempt.data)
    if lab.judge(attempt):
        trace(f"got {shown}")
        return Outcome(attack.id, setting, Verdict.BROKEN, shown, "", tuple(trace.steps))
    return Outcome(attack.id, setting, Verdict.STOPPED, shown, attempt.saw, tuple(trace.steps))


def render(data: bytes) -> str:
    """Data as the matrix shows it: text if it is printable, else hex."""
    text = data.decode("ascii", "replace")
    if data and data.isascii() and text.isprintable():
        return repr(text)
    return data.hex()


def cells(attacks: Iterable[Attack]) -> list[tuple[str, Setting]]:
    """Every cell of the matrix: each attack at each mode on the default chip, then at its
    fix settings."""
    return [(attack.id, setting) for attack in attacks
            for setting in (*(Setting(mode) for mode in MODES), *attack.fixes)]


def _run_cell(cell: tuple[str, Setting], seed: bytes) -> Outcome:
    return run_attack(ATTACKS[cell[0]], cell[1], seed)


def run_matrix(attacks: Iterable[Attack] | None = None, jobs: int | None = None,
               progress: Callable[[Outcome], None] | None = None,
               seed: bytes = DEFAULT_SEED) -> list[Outcome]:
    """Every cell computed, on `jobs` processes (default: every core), in matrix order; the
    labs draw their platforms and victims' secrets from `seed`."""
    todo = cells(ATTACKS.values() if attacks is None else attacks)
    if jobs is None:
        jobs = os.cpu_count() or 1
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: need at least one")
    results: list[Outcome] = []
    run_cell = partial(_run_cell, seed=seed)
    if jobs == 1:
        for cell in todo:
            results.append(run_cell(cell))
            if progress is not None:
                progress(results[-1])
        return results
    with ProcessPoolExecutor(jobs) as pool:
        for outcome in pool.map(run_cell, todo):
            results.append(outcome)
            if progress is not None:
                progress(outcome)
    return results


def matrix_document(outcomes: Iterable[Outcome]) -> dict[str, object]:
    """The matrix as `sevsim attack matrix --json` prints it: the modes and every cell."""
    return {"modes": list(MODES), "cells": [o.to_json() for o in outcomes]}
