"""The command line every script shares: `python train.py --epochs=1 --seed=3`, the run folder a
script works on, the rules a setting must follow, and one paragraph instead of a traceback.

Every key must be one of the script's settings and every value must parse as that setting's type
(an int where the default is an int, and so on; `None` is accepted where the default is None).
Range checks come after, from a table of rules (check_rules), so that nothing starts on a value
that would fail an hour later.
"""

import math
import os
import sys

from plumbing.errors import ConfigError, ExplainedError


def parse_overrides(defaults, argv, types_of_none_defaults):
    """Return a copy of `defaults` with the `--key=value` arguments of argv applied.

    types_of_none_defaults: for settings whose default is None, the type a given value must have
    (for example {"data_path": str, "train_subset": int}).
    """
    config = dict(defaults)
    for argument in argv:
        if not argument.startswith("--") or "=" not in argument:
            raise ConfigError(
                f"Cannot read the argument {argument!r}: give hyperparameters as --key=value, "
                f"for example --epochs=1. Known keys: {', '.join(sorted(defaults))}."
            )
        key, text = argument[2:].split("=", 1)
        if key not in defaults:
            raise ConfigError(
                f"Unknown hyperparameter {key!r}. Known ones: {', '.join(sorted(defaults))}."
            )
        default = defaults[key]
        wanted = type(default) if default is not None else types_of_none_defaults[key]
        config[key] = _parse_value(key, text, wanted, allow_none=default is None)
    return config


def _parse_value(key, text, wanted, allow_none):
    if allow_none and text == "None":
        return None
    try:
        if wanted is bool:
            if text not in ("True", "False", "true", "false", "1", "0"):
                raise ValueError
            return text in ("True", "true", "1")
        if wanted is int:
            return int(text)
        if wanted is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        return wanted(text)
    except ValueError:
        expected = {bool: "True or False", int: "an integer", float: "a finite number"}.get(
            wanted, wanted.__name__)
        extra = " or None" if allow_none else ""
        raise ConfigError(
            f"--{key}={text!r} is not valid: expected {expected}{extra}."
        ) from None


def check_rules(config, rules):
    """Refuse the first setting that breaks its rule. rules: (name, test, allowed) triples, where
    test(value) says whether the value is allowed and `allowed` says in words what is."""
    for name, test, allowed in rules:
        if not test(config[name]):
            raise ConfigError(f"{name} must be {allowed}, not {config[name]!r}.")


def split_run_dir(argv, usage, default=None):
    """(run folder, the other arguments) of `python SCRIPT.py RUN_DIR [--key=value ...]`: the
    first argument when it is not a --key=value, else default (ConfigError saying usage when
    there is no default)."""
    if argv and not argv[0].startswith("--"):
        return argv[0], argv[1:]
    if default is None:
        raise ConfigError(f"Give the run folder first: {usage}.")
    return default, argv


def quiet_tensorflow():
    """Keep TensorFlow's start-up chatter out of the output (call before Keras is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_command(main):
    """Run a command's main(argv) and exit with its code; an ExplainedError (ConfigError,
    DataError, RunError) becomes one paragraph on stderr and exit code 2."""
    try:
        sys.exit(main(sys.argv[1:]))
    except ExplainedError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
