"""Which real program output a simulated job leaves behind, chosen by the seed.

Successes hand on a structure whose elements the shipped pseudopotential tables cover (a
ZnI output would make every later step of a Si material unpreparable). The files are the
bundled corpus of real QE and CRYSTAL outputs (tests/data/corpus in a
source checkout; ``--corpus DIR`` elsewhere), so the real parsers and the recovery trees see
real successes and real errors. Each row is (weight, corpus file, companion files): a
companion is another real output of the same run that the step's interpretation reads
(CRYSTAL's BAND.DAT and fort.25).
"""

from __future__ import annotations

import os
from pathlib import Path

# (code, step) -> [(weight, file, {name in the job folder: corpus file})]
Outcome = tuple[int, str, dict[str, str]]

OUTCOMES: dict[tuple[str, str], list[Outcome]] = {
    ("qe", "OPT"): [
        (8, "qe/pw66_vcrelax_converged.out", {}),
        (4, "qe/pw73_tio2_relax_converged.out", {}),
        (1, "qe/pw66_vcrelax_max_steps_reached.out", {}),
        (1, "qe/pw61_vcrelax_bfgs_history_reset_failure.out", {}),
        (1, "qe/pw66_relax_scf_NOT_converged.out", {}),
        (1, "qe/pw66_max_cpu_time_exceeded.out", {}),
    ],
    ("qe", "SP"): [
        (6, "qe/pw66_si_scf_converged.out", {}),
        (4, "qe/pw70_si_scf_216k_gap.out", {}),
        (1, "qe/pw66_scf_convergence_NOT_achieved.out", {}),
        (1, "qe/pw61_scf_truncated_after_writing.out", {}),
        (1, "qe/pw70_graphene_scf_POSITIVE_total_energy.out", {}),
    ],
    ("qe", "BAND"): [
        (8, "qe/pw66_si_scf_converged.out", {}),
        (1, "qe/pw70_graphene_bands_FAILED_missing_save.out", {}),
    ],
    ("qe", "DOS"): [
        (8, "qe/pw70_si_scf_216k_gap.out", {}),
        (1, "qe/pw66_scf_convergence_NOT_achieved.out", {}),
    ],
    ("crystal", "OPT"): [
        (8, "crystal/c17_mgo_sto3g_opt_converged.out", {}),
        (3, "crystal/c14_iron_pbe_opt_converged.out", {}),
        (1, "crystal/c17_mackinawite_opt_FAILED_100points.out", {}),
        (1, "crystal/c14_bcc_iron_opt_SCF_FAILED_optgeom_stop.out", {}),
        (1, "crystal/c17_nio_afm_opt_killed_walltime_SIGTERM.out", {}),
    ],
    ("crystal", "SP"): [
        (8, "crystal/c17_mgo_sto3g_scf_converged.out", {}),
        (2, "crystal/c17_nio_afm_scf_restart_converged.out", {}),
        (1, "crystal/c17_nio_afm_scf_TOO_MANY_CYCLES.out", {}),
        (1, "crystal/c17_truncated_mid_scf.out", {}),
    ],
    ("crystal", "BAND"): [
        (8, "crystal/p17_mgo_band.outp", {"BAND.DAT": "crystal/p17_mgo_BAND.DAT"}),
        (1, "crystal/c09_fe50_opt_then_properties_ERROR_wavefunction_not_found.out", {}),
    ],
    ("crystal", "DOS"): [
        (8, "crystal/p17_mgo_newk_doss.outp", {"fort.25": "crystal/p17_mgo_doss.fort25"}),
        (1, "crystal/c09_fe50_opt_then_properties_ERROR_wavefunction_not_found.out", {}),
    ],
}

CORPUS_ENV = "EVENTFLOW_SIM_CORPUS"


def default_corpus() -> Path:
    """The corpus folder: $EVENTFLOW_SIM_CORPUS, else tests/data/corpus of this checkout."""
    env = os.environ.get(CORPUS_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "tests" / "data" / "corpus"


class Corpus:
    """The outcome files, read once and kept in memory (a simulation writes thousands)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or default_corpus()
        if not (self.root / "TRUTH.tsv").is_file():
            raise FileNotFoundError(f"{self.root}: not the corpus folder (no TRUTH.tsv); "
                                    f"set {CORPUS_ENV} or pass --corpus")
        self._cache: dict[str, bytes] = {}

    def read(self, relative: str) -> bytes:
        data = self._cache.get(relative)
        if data is None:
            data = self._cache[relative] = (self.root / relative).read_bytes()
        return data

    def outcomes(self, code: str, step: str) -> list[Outcome]:
        return OUTCOMES.get((code, step), [])
