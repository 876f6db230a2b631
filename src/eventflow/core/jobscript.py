"""Job scripts: template text + validated values -> a bash script for sbatch (or the local runner).

Pure: the shell reads ``slurm/job.sh.tmpl`` and passes its text here. Every value that
reaches the script is either checked against a strict pattern (the ``#SBATCH`` lines are
parsed by sbatch, not by a shell, so they cannot be quoted) or passed through
``shlex.quote``; names of materials and files never reach the shell unquoted.

The script's contract (see the template): it runs the commands in order in the job folder
(or a scratch copy of it), stops at the first failing one, and at exit - also on scancel or
at the time limit, announced by ``--signal=B:USR1@N`` - atomically writes
``eventflow-done.json`` in the job folder.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from eventflow.errors import ConfigError

RECORD_NAME = "eventflow-done.json"
LOCAL_JOB_ID_VARIABLE = "EVENTFLOW_LOCAL_JOB_ID"
DEFAULT_SIGNAL_SECONDS = 300

# Partition, account and QOS names as sites spell them; a comma separates a partition list.
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"
_SCHEDULER_NAME = re.compile(rf"^{_NAME}(,{_NAME})*$")
_MODULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+/-]{0,127}$")
_MEMORY = re.compile(r"^[1-9][0-9]{0,8}[KMGT]?$")
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# SLURM's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_WALLTIME = re.compile(
    r"^(?:(?P<days>\d+)-(?P<dh>\d{1,2})(?::(?P<dm>\d{1,2})(?::(?P<ds>\d{1,2}))?)?"
    r"|(?P<a>\d+)(?::(?P<b>\d{1,2})(?::(?P<c>\d{1,2}))?)?)$"
)
# Variables a scratch root may name, e.g. /scratch/$USER; anything else is literal text.
SCRATCH_VARIABLES = ("USER", "HOME", "TMPDIR", "SCRATCH", "SLURM_TMPDIR", "LOCAL_SCRATCH")
_SCRATCH_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidJobSpec(ConfigError):
    """A resource or command value that must not go into a job script; the message says which."""


def walltime_seconds(text: str) -> int:
    """Seconds in a SLURM walltime (``90``, ``1:30``, ``02:00:00``, ``1-12``, ``1-00:30:00``).

    A bare number is minutes and ``M:S`` is minutes and seconds, as sbatch reads them.
    """
    match = _WALLTIME.match(str(text).strip())
    if match is None:
        raise InvalidJobSpec(
            f"walltime {text!r}: use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
        )
    g = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "days" in g:
        seconds = g["days"] * 86400 + g["dh"] * 3600 + g.get("dm", 0) * 60 + g.get("ds", 0)
    elif "c" in g:
        seconds = g["a"] * 3600 + g["b"] * 60 + g["c"]
    else:
        seconds = g["a"] * 60 + g.get("b", 0)
    if seconds <= 0:
        raise InvalidJobSpec(f"walltime {text!r} is zero")
    return seconds


def _check(pattern: re.Pattern[str], value: str, what: str, hint: str) -> str:
    if not isinstance(value, str) or pattern.match(value) is None:
        raise InvalidJobSpec(f"{what} {value!r} is not allowed ({hint})")
    return value


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidJobSpec(f"{what} must be a positive whole number, not {value!r}")
    return value


def check_relative_name(name: str, what: str = "file name") -> str:
    """A file name inside the job folder: relative, no ``..``, no control characters."""
    if not isinstance(name, str) or not name or _CONTROL.search(name):
        raise InvalidJobSpec(f"{what} {name!r}: empty or holds control characters")
    if name.startswith("/") or ".." in name.split("/"):
        raise InvalidJobSpec(f"{what} {name!r} must stay inside the job folder (no '/' or '..')")
    return name


def check_absolute_path(path: str, what: str = "job folder") -> str:
    if not isinstance(path, str) or not path.startswith("/") or _CONTROL.search(path):
        raise InvalidJobSpec(f"{what} {path!r} must be an absolute path without control characters")
    return path


@attrs.frozen
class Resources:
    """What one step asks the scheduler for; ``None`` leaves the site's default."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    nodes: int = 1
    ntasks: int = 1
    cpus_per_task: int = 1
    mem: str | None = None  # per node, e.g. 2G or 500M (SLURM's default unit is M)
    mem_per_cpu: str | None = None
    time: str = "01:00:00"
    modules: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    scratch_root: str | None = None  # absolute; may name $USER, $TMPDIR, ... (SCRATCH_VARIABLES)
    signal_seconds: int = DEFAULT_SIGNAL_SECONDS  # warning before the time limit

    def __attrs_post_init__(self) -> None:
        for field in ("partition", "account", "qos"):
            value = getattr(self, field)
            if value is not None:
                _check(_SCHEDULER_NAME, value, field, "letters, digits, _ . + - and commas")
        for field in ("nodes", "ntasks", "cpus_per_task", "signal_seconds"):
            _positive(getattr(self, field), field)
        if self.mem is not None and self.mem_per_cpu is not None:
            raise InvalidJobSpec("give mem or mem_per_cpu, not both")
        for field in ("mem", "mem_per_cpu"):
            value = getattr(self, field)
            if value is not None:
                _check(_MEMORY, value, field, "a number with an optional K, M, G or T, like 2G")
        walltime_seconds(self.time)
        for module in self.modules:
            _check(_MODULE_NAME, module, "module", "letters, digits and _ . + - /")
            if ".." in module:
                raise InvalidJobSpec(f"module {module!r} is not allowed ('..')")
        if self.scratch_root is not None:
            _scratch_words(self.scratch_root)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "resources") -> Resources:
        """Build from a config mapping (YAML), naming ``source`` and the key on a bad value."""
        if not isinstance(data, Mapping):
            raise InvalidJobSpec(
                f"{source}: expected a mapping of resources, got {type(data).__name__}")
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidJobSpec(f"{source}: unknown resource(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(sorted(known))}")
        values = dict(data)
        if "time" in values and values["time"] is not None:
            values["time"] = str(values["time"])
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except InvalidJobSpec as exc:
            raise InvalidJobSpec(f"{source}: {exc}") from None

    def merged(self, overrides: Mapping[str, Any]) -> Resources:
        """These resources with ``overrides`` (e.g. a longer walltime for a retry) applied."""
        return Resources.from_mapping({**attrs.asdict(self), **dict(overrides)})

    @property
    def effective_signal_seconds(self) -> int:
        """The warning time used: at most half the walltime, so it comes after the start."""
        return max(1, min(self.signal_seconds, walltime_seconds(self.time) // 2))


@attrs.frozen
class Command:
    """One program to run: its argv, and optional stdin/stdout/stderr files in the job folder."""

    argv: tuple[str, ...] = attrs.field(converter=tuple)
    stdin: str | None = None
    stdout: str | None = None
    stderr: str | None = None

    def __attrs_post_init__(self) -> None:
        if not self.argv:
            raise InvalidJobSpec("a command needs at least a program name")
        for arg in self.argv:
            if not isinstance(arg, str) or "\x00" in arg:
                raise InvalidJobSpec(f"command argument {arg!r} is not a string without NUL")
        for field in ("stdin", "stdout", "stderr"):
            value = getattr(self, field)
            if value is not None:
                check_relative_name(value, field)

    @classmethod
    def of(cls, value: Command | Iterable[str]) -> Command:
        return value if isinstance(value, Command) else cls(argv=tuple(value))

    def render(self) -> str:
        words = ["ef_run", *(shlex.quote(a) for a in self.argv)]
        if self.stdin is not None:
            words.append("<" + shlex.quote(self.stdin))
        if self.stdout is not None:
            words.append(">" + shlex.quote(self.stdout))
        if self.stderr is not None:
            words.append("2>" + shlex.quote(self.stderr))
        return " ".join(words)


def _to_commands(values: Iterable[Command | Iterable[str]]) -> tuple[Command, ...]:
    if isinstance(values, (str, bytes)):
        raise InvalidJobSpec("commands must be a list of argv lists, not one string")
    commands = []
    for value in values:
        if isinstance(value, (str, bytes)):
            raise InvalidJobSpec(f"command {value!r} must be an argv list, not one string")
        commands.append(Command.of(value))
    return tuple(commands)


@attrs.frozen
class JobSpec:
    """Everything a job script needs: where it runs, what it runs, and with what resources."""

    job_dir: str
    idempotency_key: str
    commands: tuple[Command, ...] = attrs.field(converter=_to_commands)
    resources: Resources = attrs.field(factory=Resources)
    inputs: tuple[str, ...] = attrs.field(default=(), converter=tuple)  # copied to scratch

    def __attrs_post_init__(self) -> None:
        check_absolute_path(self.job_dir)
        _check(_IDEMPOTENCY_KEY, self.idempotency_key, "idempotency key",
               "letters, digits and . _ : -")
        if not self.commands:
            raise InvalidJobSpec("a job needs at least one command")
        for name in self.inputs:
            check_relative_name(name, "input file")


def sbatch_directives(resources: Resources) -> list[str]:
    """The ``#SBATCH`` lines for ``resources`` (values were validated: sbatch reads them raw)."""
    lines = ["#SBATCH --output=slurm-%j.out"]
    for option, value in (("partition", resources.partition), ("account", resources.account),
                          ("qos", resources.qos)):
        if value is not None:
            lines.append(f"#SBATCH --{option}={value}")
    lines.append(f"#SBATCH --nodes={resources.nodes}")
    lines.append(f"#SBATCH --ntasks={resources.ntasks}")
    lines.append(f"#SBATCH --cpus-per-task={resources.cpus_per_task}")
    if resources.mem is not None:
        lines.append(f"#SBATCH --mem={resources.mem}")
    if resources.mem_per_cpu is not None:
        lines.append(f"#SBATCH --mem-per-cpu={resources.mem_per_cpu}")
    lines.append(f"#SBATCH --time={resources.time}")
    lines.append(f"#SBATCH --signal=B:USR1@{resources.effective_signal_seconds}")
    return lines


def _scratch_words(root: str) -> str:
    """The scratch root as one shell word: literal parts quoted, allowed variables as "${VAR}"."""
    if not isinstance(root, str) or _CONTROL.search(root):
        raise InvalidJobSpec(f"scratch_root {root!r}: not a path")
    if not (root.startswith("/") or re.match(r"^\$\{?[A-Za-z_]", root)):
        raise InvalidJobSpec(f"scratch_root {root!r} must be absolute (or start with $TMPDIR etc.)")
    literal = _SCRATCH_VARIABLE.sub("", root)
    if not re.fullmatch(r"[A-Za-z0-9_.@+,=:/-]*", literal):
        raise InvalidJobSpec(f"scratch_root {root!r}: only letters, digits, _ . @ + , = : / - "
                             f"and ${{VAR}} for {', '.join(SCRATCH_VARIABLES)}")
    pieces: list[str] = []
    position = 0
    for match in _SCRATCH_VARIABLE.finditer(root):
        name = match.group("braced") or match.group("bare")
        if name not in SCRATCH_VARIABLES:
            raise InvalidJobSpec(f"scratch_root {root!r}: ${name} is not one of "
                                 f"{', '.join('$' + v for v in SCRATCH_VARIABLES)}")
        if match.start() > position:
            pieces.append(shlex.quote(root[position:match.start()]))
        pieces.append(f'"${{{name}}}"')
        position = match.end()
    if position < len(root):
        pieces.append(shlex.quote(root[position:]))
    if ".." in root.split("/"):
        raise InvalidJobSpec(f"scratch_root {root!r} must not contain '..'")
    return "".join(pieces)


def _modules_block(modules: tuple[str, ...]) -> str:
    if not modules:
        return ": # none"
    lines = [
        "set +u  # module initialisation scripts use unset variables",
        "if ! type module >/dev/null 2>&1; then",
        "    for ef_init in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh \\",
        "        /usr/share/lmod/lmod/init/bash /usr/share/Modules/init/bash; do",
        '        [ -r "$ef_init" ] && . "$ef_init" && break',
        "    done",
        "fi",
    ]
    for module in modules:
        quoted = shlex.quote(module)
        message = shlex.quote(f"module load {module} failed")
        lines.append(f"module load {quoted} || ef_fail_setup {message}")
    lines.append("set -u")
    return "\n".join(lines)


def _stage_in_block(scratch_root: str | None, inputs: tuple[str, ...]) -> str:
    if scratch_root is None:
        return ": # none: the commands run in the job folder"
    copy = (
        "cp -Rp -- ./. \"$EF_SCRATCH/\""
        if not inputs
        else "cp -p -- " + " ".join(shlex.quote("./" + name) for name in inputs) + ' "$EF_SCRATCH/"'
    )
    return "\n".join([
        f"EF_SCRATCH_ROOT={_scratch_words(scratch_root)}",
        'mkdir -p -- "$EF_SCRATCH_ROOT" '
        '|| ef_fail_setup "cannot create scratch root $EF_SCRATCH_ROOT"',
        "EF_SCRATCH=\"$(mktemp -d \"$EF_SCRATCH_ROOT/eventflow-$(printf '%s' \"$EF_JOB_ID\" "
        "| tr -cd 'A-Za-z0-9._-').XXXXXX\")\" || ef_fail_setup \"cannot create a folder in "
        "$EF_SCRATCH_ROOT\"",
        "EF_COPIED_BACK=false",
        f"{copy} || ef_fail_setup \"cannot copy the inputs to $EF_SCRATCH\"",
        'cd -- "$EF_SCRATCH" || ef_fail_setup "cannot enter $EF_SCRATCH"',
    ])


def render_job_script(template: str, spec: JobSpec) -> str:
    """Fill ``template`` (the text of slurm/job.sh.tmpl) for ``spec``.

    Every placeholder of the template must be one this renderer knows, and every value it
    knows must have a placeholder, so a template and renderer that drift apart fail loudly.
    """
    signal_seconds = spec.resources.effective_signal_seconds
    values = {
        "directives": "\n".join(sbatch_directives(spec.resources)),
        "job_dir": shlex.quote(spec.job_dir),
        "idempotency_key": shlex.quote(spec.idempotency_key),
        "signal_seconds": str(signal_seconds),
        "stop_wait": str(max(1, min(30, signal_seconds // 3))),
        "modules": _modules_block(spec.resources.modules),
        "stage_in": _stage_in_block(spec.resources.scratch_root, spec.inputs),
        "commands": "\n".join(c.render() for c in spec.commands),
    }
    found = set(_PLACEHOLDER.findall(template))
    unknown = found - set(values)
    missing = set(values) - found
    if unknown or missing:
        raise InvalidJobSpec(
            "job script template does not match the renderer: "
            + (f"unknown placeholder(s) {', '.join(sorted(unknown))}" if unknown else "")
            + ("; " if unknown and missing else "")
            + (f"missing placeholder(s) {', '.join(sorted(missing))}" if missing else "")
        )
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


_DIRECTIVE = re.compile(r"^#SBATCH\s+--(?P<option>[a-z-]+)(?:[= ](?P<value>\S+))?\s*$")


def read_directives(script: str) -> dict[str, str]:
    """The ``#SBATCH --option=value`` lines at the top of a job script (before the first command).

    The local executor uses them to honour ``--time`` and ``--signal`` the way SLURM does.
    """
    directives: dict[str, str] = {}
    for number, line in enumerate(script.splitlines()):
        stripped = line.strip()
        if number == 0 and stripped.startswith("#!"):
            continue
        if stripped and not stripped.startswith("#"):
            break
        match = _DIRECTIVE.match(stripped)
        if match is not None:
            directives[match.group("option")] = match.group("value") or ""
    return directives


def signal_warning_seconds(value: str) -> int | None:
    """Seconds before the limit from a ``--signal`` value like ``B:USR1@300`` (USR1 only)."""
    match = re.match(r"^(?:[A-Z]+:)?(?:SIG)?USR1(?:@(\d+))?$", value)
    if match is None:
        return None
    return int(match.group(1)) if match.group(1) else 60
