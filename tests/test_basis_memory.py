"""A density whose reorthogonalized basis would not fit in memory gets a --max-basis that fits, with a note."""

from __future__ import annotations

import dataclasses

from landscape.analysis import BASIS_MEMORY_SHARE, AnalysisSettings
from landscape.devices import memory_bytes


def test_a_basis_beyond_memory_is_capped_to_what_fits_with_a_note():
    settings = AnalysisSettings(metrics=("eigs", "density"), density_probes=10, density_steps=80)
    dimension = 10**9  # 10 × 80 float32 vectors of a billion parameters: 3 TB, beyond any machine's quarter
    fitted, notes = settings.fit_to(dimension)
    fits = int(memory_bytes() * BASIS_MEMORY_SHARE // (4 * dimension))
    assert fitted.max_basis == max(fits, settings.top_k + 2)
    assert not fitted.reorthogonalize
    assert any("would not fit in memory" in note and "max_basis set to" in note for note in notes)


def test_a_basis_that_fits_and_an_explicit_max_basis_are_left_alone():
    settings = AnalysisSettings(metrics=("eigs", "density"))
    assert settings.fit_to(85) == (settings, [])
    explicit = dataclasses.replace(settings, max_basis=900)
    fitted, notes = explicit.fit_to(10**9)
    assert fitted.max_basis == 900 and not any("would not fit" in note for note in notes)
