"""Job folders as the tests make them: the shipped job script rendered into a folder, and
the completion record a job leaves there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eventflow.core.jobscript import RECORD_NAME, JobSpec, render_job_script

TEMPLATE = (Path(__file__).resolve().parents[1] / "slurm" / "job.sh.tmpl").read_text()


def write_job_script(folder: Path, spec: JobSpec) -> Path:
    """``folder/job.sh``: the shipped template rendered for ``spec``."""
    script = folder / "job.sh"
    script.write_text(render_job_script(TEMPLATE, spec))
    return script


def read_record(job_dir: Path) -> dict[str, Any]:
    """The completion record the job script wrote into ``job_dir``."""
    return json.loads((job_dir / RECORD_NAME).read_text())
