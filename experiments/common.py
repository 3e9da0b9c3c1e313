"""What the experiment scripts share: the command line and the compilation cache.

Tables, figures and files are in :mod:`experiments.report`; training runs
over seeds, finished-run re-reading and the baselines in
:mod:`experiments.runs`.

Every experiment is ``run(config, workdir, progress=True) -> results`` plus a ``main`` that
parses the command line with :func:`cli`::

    python -m experiments.NAME --config=experiments/configs/NAME.py[:ARG] \\
        --config.FIELD=VALUE --workdir=DIR [--overwrite]

``--config`` is an ``ml_collections`` config file (``ARG``, e.g. ``quick``,
is passed to its ``get_config``); every field can be overridden with
``--config.FIELD=VALUE``; a misspelt field is a one-line error naming it and
the closest fields.  A rerun with the same work directory resumes the runs
it holds from their checkpoints (a rerun with another config is refused,
naming the fields that differ); ``--overwrite`` deletes what earlier runs
wrote there and starts afresh.  Only one command works in a work directory
at a time.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import sys
import warnings
from typing import Callable, Dict, List, Optional, Sequence

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")

HELP_EPILOGUE = """\
config fields:
  --config=FILE[:ARG] loads FILE's get_config(ARG); --config.FIELD=VALUE
  overrides one field (dotted for nested ones: --config.head.num_layers=2,
  --config.eval.knn_k=5).  The training fields, with their meaning and
  defaults, are documented in tfjax/config.py; the experiment's own fields
  and its sizes (ARG) in its config file:
    {config}
  A misspelt field is an error naming the closest ones.  Where the config has per-run overrides (runs), set a run's
  own fields there: --config.runs.NAME.FIELD=VALUE.

work directory (--workdir, default workdirs/{name}[_ARG]):
  every training run keeps its checkpoints there, so a rerun with the same
  work directory resumes each run from its last checkpoint; a rerun whose
  config (or generated data) differs in a way that changes the results is
  refused, naming the fields (raising num_steps continues training;
  input.*, log_every, checkpoint_every, write_plots, data_dir and eval.* may
  change freely).  --overwrite deletes what earlier runs wrote there
  (checkpoints, metrics, configs, results) and starts afresh.  One command
  at a time per work directory (a second one stops at once).

errors are one line; --debug shows the traceback.
"""


def config_path(name: str) -> str:
  """The path of ``experiments/configs/NAME.py``."""
  return os.path.join(CONFIG_DIR, f"{name}.py")


def cli(
  run: Callable,
  name: str,
  argv: Optional[Sequence[str]] = None,
  description: str = "",
  default_arg: Optional[str] = None,
  config_name: Optional[str] = None,
):
  """Parses ``--config``, ``--config.*``, ``--workdir`` and friends, then runs.

  ``run(config, workdir, progress=...)`` is called with the loaded,
  overridden config and the work directory (default
  ``workdirs/NAME[_ARG]``), once the work directory is known to be writable
  and is locked for this command (``tfjax.workdir_access.lock``: a second command
  in it stops at once); ``--overwrite`` first deletes what earlier runs
  wrote there (``tfjax.workdir.clear_tree``).  A ``--config.FIELD``
  override that every run of the config's ``runs`` (those of ``compare``)
  overrides again is an error (it would change nothing); one that some runs
  override is a warning.  Errors are printed as one line (``--debug`` shows
  the traceback) and exit with status 2 (a full disk names the path);
  Ctrl-C prints one line naming the checkpoint a rerun resumes from and
  exits with status 130; warnings are one line each.
  ``config_name`` names the default config file when it is not ``NAME``.
  Returns what ``run`` returns.
  """
  from absl import flags
  from ml_collections import config_flags

  argv = list(sys.argv[1:] if argv is None else argv)
  default = config_path(config_name or name) + (f":{default_arg}" if default_arg else "")
  debug = "--debug" in argv
  parsing, config, workdir = True, None, None
  formatwarning = warnings.formatwarning
  ctrl_c = _CtrlCNeverSwallowed()
  ctrl_c.start()
  try:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(
      "config",
      default,
      f"config file (default {os.path.relpath(default)}); "
      "a suffix :ARG is passed to its get_config; override any field with "
      "--config.FIELD=VALUE (fields: tfjax/config.py and the config file)",
      flag_values=fv,
      sys_argv=[f"experiments.{name}"] + argv,
    )  # which overrides to define
    flags.DEFINE_string(
      "workdir",
      None,
      "work directory (default "
      f"workdirs/{name}[_ARG]); a rerun resumes the runs it "
      "holds from their checkpoints",
      flag_values=fv,
    )
    flags.DEFINE_boolean(
      "overwrite",
      False,
      "delete what earlier runs wrote "
      "in the work directory (checkpoints, metrics, configs, "
      "results) and start afresh",
      flag_values=fv,
    )
    flags.DEFINE_boolean("progress", True, "progress bars (--noprogress: off)", flag_values=fv)
    flags.DEFINE_boolean("debug", False, "show the traceback of an error", flag_values=fv)
    flags.DEFINE_enum(
      "xla_cpu_scheduler",
      None,
      ["memory", "concurrency"],
      "XLA's CPU scheduler (tfjax.runtime); 'memory' for large blockwise batches on CPU",
      flag_values=fv,
    )
    flags.DEFINE_string(
      "coordinator_address",
      None,
      "multi-process runs: HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS)",
      flag_values=fv,
    )
    flags.DEFINE_string(
      "num_processes",
      None,
      "multi-process runs: number of processes, or 'auto' on TPU pods / SLURM",
      flag_values=fv,
    )
    flags.DEFINE_integer(
      "process_id", None, "multi-process runs: this process's id", flag_values=fv
    )
    if any(a in ("-h", "--help", "--helpfull") for a in argv):
      epilogue = HELP_EPILOGUE.format(
        config=os.path.relpath(config_path(config_name or name)), name=name
      )
      print(f"{description}\n\nflags:\n{fv.get_help()}\n\n{epilogue}")
      return None
    stray = fv([f"experiments.{name}"] + argv)[1:]
    if stray:  # absl keeps positional arguments: a flag without its dashes
      raise ValueError(stray_argument(stray[0], fv))
    config = fv.config
    parsing = False
    _one_line_warnings()
    for message in shadowed_overrides(config, argv):
      warnings.warn(message)
    if fv.xla_cpu_scheduler:
      from tfjax.runtime import use_low_memory_cpu_scheduler

      use_low_memory_cpu_scheduler(fv.xla_cpu_scheduler)
    from tfjax import distributed
    from tfjax import workdir as workdirs
    from tfjax import workdir_access

    distributed.initialize(
      fv.coordinator_address, fv.num_processes, fv.process_id
    )  # before any JAX computation
    workdir = fv.workdir or os.path.join(
      "workdirs", _workdir_name(fv["config"].config_filename, name)
    )
    with contextlib.ExitStack() as held:

      def prepare():
        workdir_access.check_writable(workdir)
        held.enter_context(workdir_access.lock(workdir))
        if fv.overwrite:
          removed = workdirs.clear_tree(workdir)
          print(
            f"--overwrite: removed {len(removed)} files and directories "
            f"of earlier runs under {workdir}",
            file=sys.stderr,
            flush=True,
          )

      workdir_access.agree(prepare)
      cache = os.path.join(workdir, COMPILATION_CACHE) if config.get("compilation_cache") else None
      with compilation_cache(cache):
        return run(config, workdir, progress=fv.progress)
  except KeyboardInterrupt:  # Ctrl-C: one line, exit status 128 + SIGINT
    if debug:
      raise
    print(f"interrupted; {_resume_hint(workdir)}", file=sys.stderr)
    raise SystemExit(130) from None
  except Exception as e:  # one line for users, the traceback with --debug
    if debug:
      raise
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      print(
        f"error: no space left on device writing {e.filename or workdir}; "
        f"free some, then {_resume_hint(workdir)}",
        file=sys.stderr,
      )
    else:
      print(
        f"error: {error_line(e, argv if parsing else None, config)} (--debug for the traceback)",
        file=sys.stderr,
      )
    raise SystemExit(2) from None
  finally:
    warnings.formatwarning = formatwarning
    ctrl_c.stop()


class _CtrlCNeverSwallowed:
  """Ctrl-C that lands in a garbage-collector callback or a ``__del__`` is
  raised again in the main code, from :meth:`start` to :meth:`stop`.

  Python runs a SIGINT handler between bytecodes of the main thread, which
  may be inside such a callback (JAX frees compiled programs in one); the
  KeyboardInterrupt raised there is reported as unraisable and dropped, and
  the command would run on to its end.  Here the unraisable hook has another
  thread simulate a fresh SIGINT 10 ms later (``_thread.interrupt_main``, a
  no-op where SIGINT is ignored); raised from the hook itself, it would be
  dropped again.  So Ctrl-C stops the command wherever it lands.
  """

  def __init__(self):
    self._previous = self._ours = None

  def start(self) -> None:
    import _thread
    import signal
    import threading

    previous = self._previous = sys.unraisablehook

    def hook(info):
      if isinstance(info.exc_value, KeyboardInterrupt):
        again = threading.Timer(0.01, _thread.interrupt_main, (signal.SIGINT,))
        again.daemon = True
        again.start()
      else:
        previous(info)

    self._ours = sys.unraisablehook = hook

  def stop(self) -> None:
    if self._ours is not None and sys.unraisablehook is self._ours:
      sys.unraisablehook = self._previous
    self._previous = self._ours = None


def _resume_hint(workdir: Optional[str]) -> str:
  """What rerunning the command does: resume from the newest checkpoint
  under ``workdir`` (naming its step and run directory), or start again."""
  newest = None
  if workdir is not None:
    for path in glob.glob(
      os.path.join(glob.escape(workdir), "**", "checkpoints", "*"), recursive=True
    ):
      if os.path.basename(path).isdigit() and os.path.isdir(path):
        if newest is None or os.path.getmtime(path) > os.path.getmtime(newest):
          newest = path
  if newest is None:
    return "rerun the same command to start again (no checkpoint yet)"
  run_dir = os.path.relpath(os.path.dirname(os.path.dirname(newest)), workdir)
  where = "" if run_dir == "." else f" of {run_dir}"
  return (
    f"rerun the same command to resume from step {os.path.basename(newest)}'s checkpoint{where}"
  )


# Where a config with ``compilation_cache = True`` keeps XLA's programs.
COMPILATION_CACHE = "jax_cache"


@contextlib.contextmanager
def compilation_cache(directory: Optional[str], min_compile_seconds: float = 0.1):
  """JAX's persistent compilation cache in ``directory`` while the block runs.

  A job of many runs compiles the same programs again and again: every
  seed of a recipe (the recipe is static in the step), and tfjax frees each
  finished run's programs (``tfjax.evaluation.release_compiled_programs``).
  With the cache, the second run reads them from disk: measured on the main
  job (2-core CPU), ~4 s less per run.  Programs that compiled in under
  ``min_compile_seconds`` are not written.  ``None`` leaves JAX as it is.
  The previous settings are restored afterwards, so a notebook keeps its
  own.
  """
  if directory is None:
    yield
    return
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc

  settings = {
    "jax_compilation_cache_dir": os.path.abspath(directory),
    "jax_persistent_cache_min_compile_time_secs": min_compile_seconds,
  }
  before = {k: getattr(jax.config, k) for k in settings}
  for k, v in settings.items():
    jax.config.update(k, v)
  cc.reset_cache()  # JAX opens its cache once: open it here, in directory
  try:
    yield
  finally:
    for k, v in before.items():
      jax.config.update(k, v)
    cc.reset_cache()


def stray_argument(argument: str, fv) -> str:
  """The error of a positional ``argument`` (the commands take flags only)."""
  flag = argument.lstrip("-").split("=")[0]
  hint = f"; did you mean --{argument}?" if flag in fv or flag.startswith("config.") else ""
  return f"unexpected argument {argument!r} (flags start with --){hint}"


class ShadowedOverrideError(ValueError):
  """A --config.FIELD override that no run sees (each run sets FIELD)."""


def _overridden_fields(argv: Sequence[str]) -> List[str]:
  out = []
  for a in argv:
    m = re.match(r"--config\.([\w.]+)", a)
    if m:
      out.append(m.group(1))
  return out


def run_fields(run) -> Dict:
  """A run's own fields (``config.runs.NAME``) as ``{dotted name: value}``;
  a recipe field left None (:data:`tfjax.methods.FIELDS`) is not the run's:
  the top-level value, else the method's recipe, holds."""
  from tfjax.methods import FIELDS
  from tfjax.rerun import flatten  # lazily: --help must not import JAX

  return {k: v for k, v in flatten(run).items() if not (k in FIELDS and v is None)}


def shadowed_overrides(config, argv: Sequence[str]) -> List[str]:
  """Warnings for ``--config.FIELD`` overrides that runs of ``config.runs``
  set again; raises :class:`ShadowedOverrideError` when every run does.

  The runs are those named by ``config.compare`` (all of ``config.runs``
  without it).  Overrides under ``runs.`` are the runs' own.
  """
  runs = config.get("runs") if hasattr(config, "get") else None
  if not runs or not hasattr(runs, "items"):
    return []
  names = [
    n.strip() for n in str(config.get("compare") or "").split(",") if n.strip() in runs
  ] or list(runs.keys())
  per_run = {n: run_fields(runs[n]) if hasattr(runs[n], "items") else {} for n in names}
  messages = []
  for field in _overridden_fields(argv):
    if field.split(".")[0] == "runs":
      continue
    setting = [n for n in names if any(k == field or k.startswith(field + ".") for k in per_run[n])]
    if not setting:
      continue
    where = ", ".join(f"--config.runs.{n}.{field}" for n in setting)
    if len(setting) == len(names):
      raise ShadowedOverrideError(
        f"--config.{field} changes no run: every run sets its own {field} "
        f"(runs {', '.join(setting)}); set {where}"
      )
    messages.append(
      f"--config.{field} is replaced by the own {field} of runs "
      f"{', '.join(setting)} (set {where} to change theirs)"
    )
  return messages


def _one_line_warnings():
  """Warnings as one line each (``warning: MESSAGE``), without the source line."""
  warnings.formatwarning = lambda message, category, *args, **kwargs: (
    f"warning: {' '.join(str(message).split())}\n"
  )


_LOCKED = re.compile(
  r'Key "([^"]+)" does not exist and cannot be added since '
  r"the config is locked"
)


def error_line(e: BaseException, argv: Optional[Sequence[str]] = None, config=None) -> str:
  """The one-line form of an error: ``Type: message``.

  While the command line is parsed (``argv`` given), a missing key is an
  unknown config field: the line names its dotted path and up to three
  close fields (never the whole config).  An error inside a config file's
  ``get_config`` gives its own last line, not the traceback around it.
  """
  text = str(e)
  if isinstance(e, (KeyError, AttributeError)) and len(e.args) == 1:
    text = str(e.args[0])
  text = text.replace("\\n", "\n").replace("\\'", "'")
  if "Traceback (most recent call last)" in text:  # a config file raised
    last = [l for l in text.strip().splitlines() if l.strip()][-1].strip()
    return last
  locked = _LOCKED.search(text)
  if argv is not None and (locked or isinstance(e, (KeyError, AttributeError))):
    bad = locked.group(1) if locked else _field_name(text)
    path = _full_path(bad, argv)
    from tfjax.rerun import suggest_fields

    parent = path.split(".")[:-1]
    close = [".".join(parent + [c]) for c in re.findall(r'Did you mean "([\w.]+)"', text)]
    try:
      if config is not None:
        close += suggest_fields(path, config)
      close += suggest_fields(path)
    except Exception:  # noqa: BLE001  (suggestions are a courtesy)
      pass
    close = list(dict.fromkeys(close))[:3]
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown config field {path!r}{hint}"
  if locked:
    return f"{type(e).__name__}: unknown config field {locked.group(1)!r}"
  return f"{type(e).__name__}: {' '.join(text.split())}"


def _field_name(text: str) -> str:
  for pattern in (
    r"lookup: ([\w.]+)",
    r'instead of "([\w.]+)"',
    r"'([\w.]+)'",
    r'"([\w.]+)"',
    r"^\s*([\w.]+)",
  ):
    m = re.search(pattern, text)
    if m:
      return m.group(1)
  return "?"


def _full_path(name: str, argv: Sequence[str]) -> str:
  """The dotted ``--config.`` path of the command line that holds ``name``."""
  for field in _overridden_fields(argv):
    parts = field.split(".")
    if field == name:
      return field
    if name in parts:
      return ".".join(parts[: parts.index(name) + 1])
  return name


def _workdir_name(config_filename: str, name: str) -> str:
  base = os.path.splitext(os.path.basename(config_filename.split(":")[0]))[0]
  arg = config_filename.split(":", 1)[1] if ":" in config_filename else ""
  return f"{base}_{arg}" if arg else (base or name)
