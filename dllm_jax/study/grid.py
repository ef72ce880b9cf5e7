"""Experiment grids: one file describes many runs (the points of a study).

A grid file is an ordinary experiment file (a module with `get_config()`, usable on its own
with `dllm-jax train`) that also defines

    def get_grid(config, **params) -> dict[str, dict[str, object]]

`config` is the base: `get_config()` completed with the defaults and the sweep's
`--config.KEY=VALUE` overrides. The result maps point names to override dicts, in run
order, e.g. `{"U1e5_ar": {"objective": "ar", "data.unique_tokens": 100_000}, ...}`.
`params` are the sweep's `--grid NAME=VALUE` options, passed as strings; `get_grid`
declares the ones it accepts as keyword arguments with defaults (e.g. the unique-token
budgets), so one file serves corpora of different sizes.

Decisions:
- A point's config = base + its overrides, applied as `--config.KEY=VALUE` strings (parsed to
  the type of the key they replace), so the config run in process and the printed command
  line (`point_command`) are the same config, and a value of the wrong type is an error.
- A sweep-wide `--config.KEY=...` for a key that the grid varies is an error: it would make
  the points identical.
- A point's workdir is ROOT/NAME; names are file-name safe and unique.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re

import ml_collections

from dllm_jax import config as config_lib
from dllm_jax import paths
from dllm_jax.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


@dataclasses.dataclass
class Point:
    index: int
    name: str
    overrides: dict  # KEY -> value string, as given to --config.KEY=VALUE
    config: ml_collections.ConfigDict
    workdir: str


@dataclasses.dataclass
class Grid:
    path: str  # absolute path of the grid file
    root: str  # absolute sweep root
    overrides: list  # the sweep-wide (KEY, VALUE) overrides, as given
    base: ml_collections.ConfigDict
    points: list

    def select(self, index: int | None) -> list:
        if index is None:
            return list(self.points)
        if not 0 <= index < len(self.points):
            raise ConfigError(f"--index {index} is out of range: {os.path.basename(self.path)} has {len(self.points)} points (0..{len(self.points) - 1})")
        return [self.points[index]]


def as_arg(value) -> str:
    """A Python value as a --config.KEY=VALUE string that parses back to the same value."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # 1e5 for an int key; float keys parse '100000' back to 100000.0
    return repr(value)


def parse_params(items) -> dict:
    """['budgets=1e5,3e5', ...] (the --grid options) -> {'budgets': '1e5,3e5'}."""
    params = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r} must be NAME=VALUE, e.g. --grid budgets=1e5,3e5")
        key, value = item.split("=", 1)
        params[key.strip()] = value
    return params


def _call_get_grid(module, path, base, params):
    sig = inspect.signature(module.get_grid)
    accepted = [p.name for p in list(sig.parameters.values())[1:] if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in params if k not in accepted and not takes_any]
    if unknown:
        raise ConfigError(f"--grid {unknown[0]}=... is not a parameter of {os.path.basename(path)}; it accepts: {', '.join(accepted) or 'none'}")
    points = module.get_grid(base, **params)
    if not isinstance(points, dict) or not points:
        raise ConfigError(f"get_grid() of {path!r} must return a non-empty dict {{name: {{KEY: value}}}}, got {type(points).__name__}")
    return points


def load_grid(path: str, root: str, overrides=None, params=None) -> Grid:
    """Load a grid file: the base config and every point's resolved, validated config."""
    path = os.path.abspath(path)
    root = paths.absolute(root)
    overrides = list(overrides or [])
    module = config_lib.import_experiment(path, ("get_config", "get_grid"), "grid file")
    base = config_lib.config_from_module(module, overrides)
    raw_points = _call_get_grid(module, path, base, parse_params(params) if isinstance(params, list) else dict(params or {}))
    sweep_keys = {k for k, _ in overrides}
    points = []
    for index, (name, point_overrides) in enumerate(raw_points.items()):
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"grid point name {name!r} is not a safe directory name (letters, digits, '._=+-'); rename it in get_grid()")
        clash = sorted(sweep_keys & set(point_overrides))
        if clash:
            raise ConfigError(
                f"--config.{clash[0]} is set by the grid for point {name!r} (and maybe others); a sweep-wide value would "
                "make the points identical. Drop that override, or change the grid's parameters (--grid NAME=VALUE)."
            )
        cfg = config_lib.complete(base.to_dict())
        args = {}
        for key, value in point_overrides.items():
            args[key] = as_arg(value)
            try:
                config_lib.set_key(cfg, key, args[key])
            except ConfigError as e:
                raise ConfigError(f"grid point {name!r}: {e}") from None
        try:
            config_lib.validate(cfg)
        except ConfigError as e:
            raise ConfigError(f"grid point {name!r}: {e}") from None
        points.append(Point(index, name, args, cfg, paths.join(root, name)))
    return Grid(path, root, overrides, base, points)


def point_command(grid: Grid, point: Point, python: str = "python") -> list:
    """The `dllm-jax train` command line that runs `point` (for a cluster scheduler)."""
    cmd = [python, "-m", "dllm_jax", "train", "--config", grid.path, "--workdir", point.workdir]
    cmd += [f"--config.{k}={v}" for k, v in grid.overrides]
    cmd += [f"--config.{k}={v}" for k, v in point.overrides.items()]
    return cmd


def budget_epochs(unique_tokens: int, total_tokens: int, tokens_per_step: int) -> tuple[int, int]:
    """(U, E) for a fixed total budget: U rounded UP to whole global batches (so the data
    pipeline uses exactly U and U is never below the number asked for), E = round(total / U),
    at least 1."""
    if unique_tokens <= 0:
        raise ConfigError(f"unique-token budget {unique_tokens} must be positive")
    unique = -(-int(unique_tokens) // tokens_per_step) * tokens_per_step
    return unique, max(1, round(total_tokens / unique))


def parse_numbers(text: str, what: str) -> list:
    """'1e5,3e5' -> [100000, 300000] (ints); errors name the parameter."""
    try:
        values = [int(float(x)) for x in str(text).split(",") if x.strip()]
    except (ValueError, OverflowError):  # 'abc', 'nan'; 'inf', '1e400
        raise ConfigError(f"--grid {what}={text!r} must be comma-separated numbers, e.g. {what}=1e5,3e5") from None
    if not values or min(values) <= 0:
        raise ConfigError(f"--grid {what}={text!r} must list positive numbers")
    return values


def parse_floats(text: str, what: str) -> list:
    """'0.1,0.8' -> [0.1, 0.8]: non-negative finite numbers, distinct; errors name the parameter."""
    try:
        values = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        values = [float("nan")]
    if not values or any(not (v >= 0.0 and v < float("inf")) for v in values) or len(set(values)) < len(values):
        raise ConfigError(f"--grid {what}={text!r} must be distinct comma-separated numbers >= 0, e.g. {what}=0.1,0.8,3.2")
    return values


def tuning_variants(base, objective: str, weight_decays: str = "", mir_weights: str = "", tune: str = "ar") -> list:
    """The tuning axis of one objective's point (Kim, Kotha et al. arXiv:2509.14786: AR's weight
    decay tuned at each budget; Xu et al. arXiv:2606.06888: MIR on top): [(name suffix, overrides)].

    `weight_decays` (e.g. '0.1,0.8,3.2'; '' = the base config's train.weight_decay only) and
    `mir_weights` (ar.mir_weight values, e.g. '0,0.4'; '' = the base's) apply to the objectives
    named in `tune` (comma-separated, default 'ar'); MIR only to objectives that have it (AR).
    A value equal to the base config's adds no override and no suffix, so the untuned point
    keeps its name (and workdir) and a sweep into the same root reuses it; other values add
    '_wd<value>' / '_mir<value>'. The report groups the variants of one series into
    '<series>-tuned', the best of them at each budget (`dllm_jax.study.series`)."""
    from dllm_jax import objectives

    tuned = {o.strip() for o in str(tune).split(",") if o.strip()}
    unknown = sorted(tuned - set(objectives.names()))
    if unknown:
        raise ConfigError(f"--grid tune={tune!r}: {unknown[0]!r} is not an objective; give some of {', '.join(objectives.names())}")
    if objective not in tuned:
        return [("", {})]
    wds = parse_floats(weight_decays, "weight_decays") if str(weight_decays).strip() else [float(base.train.weight_decay)]
    has_mir = objectives.by_name(objective, **{"ar.mir_weight": 1.0}).network_copies > 1
    mirs = [float(base.ar.mir_weight)]
    if str(mir_weights).strip() and has_mir:
        mirs = parse_floats(mir_weights, "mir_weights")
    out = []
    for wd in wds:
        for mir in mirs:
            suffix, over = "", {}
            if wd != float(base.train.weight_decay):
                suffix, over["train.weight_decay"] = suffix + f"_wd{wd:g}", wd
            if mir != float(base.ar.mir_weight):
                suffix, over["ar.mir_weight"] = suffix + f"_mir{mir:g}", mir
            out.append((suffix, over))
    return out


_VALUE = re.compile(r"^[A-Za-z0-9._-]+$")


def series_specs(text: str) -> list:
    """The grid's series, '<objective>[+KEY=VALUE...]' comma-separated ->
    [(objective, {KEY: VALUE}, name suffix)]: 'ar,mdm,mdm+mdm.t_proposal=beta,gidd+gidd.p_u=0.1'
    is AR, the MDM, the MDM with Beta-distributed training t and GIDD at p_u = 0.1. A series with
    overrides is named '<objective>+<last key part>=<value>...' ('mdm+t_proposal=beta'); the
    keys must be config keys (checked when the points' configs are built) and the values plain
    (letters, digits, '._-', which name directories). Raises ConfigError naming the entry."""
    from dllm_jax import objectives

    out, seen = [], set()
    for entry in (e.strip() for e in str(text).split(",")):
        if not entry:
            continue
        objective, *pairs = [part.strip() for part in entry.split("+")]
        if objective not in objectives.names():
            raise ConfigError(f"--grid objectives: {entry!r} names no objective {objective!r}; give some of "
                              f"{', '.join(objectives.names())}, each optionally with +KEY=VALUE, e.g. mdm+mdm.t_proposal=beta")
        overrides, suffix = {}, ""
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or not key.strip() or not _VALUE.match(value.strip()) or key.strip() == "objective":
                raise ConfigError(f"--grid objectives: {entry!r}: {pair!r} must be KEY=VALUE with a config key and a plain value "
                                  "(letters, digits, '._-'), e.g. mdm+mdm.t_proposal=beta")
            overrides[key.strip()] = value.strip()
            suffix += f"+{key.strip().split('.')[-1]}={value.strip()}"
        if objective + suffix in seen:
            raise ConfigError(f"--grid objectives: {entry!r} is listed twice; drop one")
        seen.add(objective + suffix)
        out.append((objective, overrides, suffix))
    if not out:
        raise ConfigError(f"--grid objectives={text!r} names no objective; e.g. objectives=ar,mdm")
    return out


def member_variants(base, members: str = "1") -> list:
    """Ensemble members of one point: [(name suffix, overrides)], K = `members` (an int >= 1):
    member 0 is the point itself, member k > 0 adds `train.member_seed` = base + k and the suffix
    '_m<k>' (another init, noise and data order on the same unique tokens: `rng.run_key`)."""
    try:
        k = int(str(members).strip())
    except ValueError:
        k = 0
    if not 1 <= k <= 64:
        raise ConfigError(f"--grid members={members!r} must be an integer in [1, 64] (the runs per ensemble; 1 = no ensembles)")
    first = int(base.train.member_seed)
    return [("", {})] + [(f"_m{i}", {"train.member_seed": first + i}) for i in range(1, k)]


def series_points(base, objectives: str = "ar,mdm", weight_decays: str = "", mir_weights: str = "", tune: str = "ar",
                  members: str = "1", ensemble: str = "") -> list:
    """Every run of one budget: [(name suffix, overrides)] for the grid's series (`series_specs`),
    each with its tuning variants (`tuning_variants`) and, for the series listed in `ensemble`
    (series specs as in `objectives`, e.g. 'ar,mdm'; '' = every series), `members` - 1 more members of its untuned
    point (`member_variants`; decided: only the point at the base config's tuning keys is
    replicated, so K members cost K runs, not K per tuning variant; to ensemble another recipe,
    set its keys sweep-wide, e.g. --config.train.weight_decay=0.8). The suffix starts with
    '_<objective>'; the overrides include 'objective'. `dllm-jax sweep` evaluates each finished
    group of members as one ensemble (`dllm_jax.study.ensemble`)."""
    specs = series_specs(objectives)
    names = [objective + suffix for objective, _, suffix in specs]
    chosen = {objective + suffix for objective, _, suffix in series_specs(ensemble)} if str(ensemble).strip() else set(names)
    if chosen - set(names):
        raise ConfigError(f"--grid ensemble={ensemble!r}: {sorted(chosen - set(names))[0]!r} is not a series of the grid; "
                          f"give some of --grid objectives ({', '.join(names)})")
    variants = member_variants(base, members)
    out = []
    for objective, overrides, spec_suffix in specs:
        for tuning_suffix, tuning in tuning_variants(base, objective, weight_decays, mir_weights, tune):
            replicated = not tuning_suffix and objective + spec_suffix in chosen
            for member_suffix, member in (variants if replicated else variants[:1]):
                out.append((f"_{objective}{spec_suffix}{tuning_suffix}{member_suffix}",
                            {"objective": objective, **overrides, **tuning, **member}))
    return out


def short_number(n: float) -> str:
    """1e5 -> '1e5', 250000 -> '2.5e5', 1.5e9 -> '1.5e9', 4096 -> '4096' (for point names)."""
    if float(n) < 1e4 and float(n).is_integer():
        return str(int(n))
    mantissa, exponent = f"{float(n):.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"
