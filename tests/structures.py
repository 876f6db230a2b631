"""Structures the tests share, taken from the real runs they stand beside."""

from __future__ import annotations

from ase import Atoms


def nio_afm() -> Atoms:
    """NiO in the antiferromagnetic P4/mmm cell of the corpus run (its output's geometry)."""
    atoms = Atoms("Ni2O2", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0, 0, 0.5],
                                             [0.5, 0.5, 0]],
                  cell=[2.94439264, 2.94439264, 4.164], pbc=True)
    atoms.set_initial_magnetic_moments([1, -1, 0, 0])
    return atoms
