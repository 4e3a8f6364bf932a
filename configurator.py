"""Command-line overrides of train.py's hyperparameters: `python train.py --epochs=1 --seed=3`.

Every key must be one of the hyperparameters and every value must parse as that
hyperparameter's type (an int where the default is an int, and so on; `None` is accepted where
the default is None). Range checks come after, in validate(), so that nothing starts on a value
that would fail an hour later.
"""

import math


class ConfigError(Exception):
    """A hyperparameter is unknown or invalid; the message says which and what is allowed."""


def parse_overrides(defaults, argv, types_of_none_defaults):
    """Return a copy of `defaults` with the `--key=value` arguments of argv applied.

    types_of_none_defaults: for hyperparameters whose default is None, the type a given value
    must have (for example {"data_path": str, "train_subset": int}).
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


def require(condition, message):
    """Raise ConfigError(message) unless condition holds; for range checks."""
    if not condition:
        raise ConfigError(message)


def run_command(main):
    """Run a command's main(argv) and exit with its code; a ConfigError, DataError or RunError
    (the errors that explain themselves) becomes one paragraph on stderr and exit code 2."""
    import sys

    from data import DataError
    from run_files import RunError

    try:
        sys.exit(main(sys.argv[1:]))
    except (ConfigError, DataError, RunError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
