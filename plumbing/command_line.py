"""The command line every script shares: `python train.py --epochs=1 --seed=3`, the run folder a
script works on, the rules a setting must follow, `--help`, and one paragraph instead of a
traceback.

Every key must be one of the script's settings and every value must parse as that setting's type
(an int where the default is an int, and so on; `None` is accepted where the default is None).
Range checks come after, from a table of rules (check_rules), so that nothing starts on a value
that would fail an hour later.

--help (or -h) prints what the script's own file declares: the first paragraph of its docstring,
the docstring's `python ...` lines, and each setting with its default and the comment written
beside it, so that the help cannot drift from the code.
"""

import ast
import ctypes
import difflib
import io
import math
import os
import sys
import textwrap
import tokenize

from plumbing.errors import ConfigError, ExplainedError

HELP_FLAGS = ("--help", "-h")
HELP_WIDTH = 100


def parse_overrides(defaults, argv, types_of_none_defaults, source=None):
    """Return a copy of `defaults` with the `--key=value` arguments of argv applied.

    types_of_none_defaults: for settings whose default is None, the type a given value must have
    (for example {"data_path": str, "train_subset": int}).
    source: the calling script's file (its __file__). --help or -h anywhere in argv prints the
    help read from it (help_text) and exits 0, before any other argument is looked at.
    """
    if any(argument in HELP_FLAGS for argument in argv):
        _print_help_and_exit(help_text(defaults, types_of_none_defaults, source))
    config = dict(defaults)
    for position, argument in enumerate(argv):
        key, text = _key_and_text(argument, argv[position + 1:], defaults)
        default = defaults[key]
        wanted = type(default) if default is not None else types_of_none_defaults[key]
        config[key] = _parse_value(key, text, wanted, allow_none=default is None)
    return config


def _print_help_and_exit(text):
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # `--help | head` closed the pipe: it has what it wanted, and Python's flush at exit
        # must not fail on it again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


def _key_and_text(argument, following, defaults):
    if argument.startswith("--") and "=" in argument:
        key, text = argument[2:].split("=", 1)
        _require_known(key, defaults)
        return key, text
    if argument.startswith("--") and argument[2:] in defaults:
        # `--epochs 3`, as argparse would take it: say how this parser wants it.
        default = defaults[argument[2:]]
        # A bare --overwrite most likely means True, not the default it already has.
        typical = not default if isinstance(default, bool) else default
        example = (following[0] if following and not following[0].startswith("-")
                   else f"VALUE, for example {argument}={typical}")
        raise ConfigError(f"Write {argument}={example}: a setting's value follows '=', not a "
                          f"space.")
    if argument.startswith("--"):
        _require_known(argument[2:], defaults)
    raise ConfigError(
        f"Cannot read the argument {argument!r}: give hyperparameters as --key=value, "
        f"for example --epochs=1. Known keys: {', '.join(sorted(defaults))}."
    )


def _require_known(key, defaults):
    if key not in defaults:
        nearest = difflib.get_close_matches(key, defaults, n=1)
        guess = f" Did you mean {nearest[0]!r}?" if nearest else ""
        raise ConfigError(f"Unknown hyperparameter {key!r}.{guess} Known ones: "
                          f"{', '.join(sorted(defaults))} (--help describes each).")


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


# ---- --help --------------------------------------------------------------------------------------
def help_text(defaults, types_of_none_defaults, source=None):
    """The script's purpose, its usage lines, and every setting as `--name=default  comment`
    under its group, all read from the source file; without one, the settings alone."""
    purpose, usage, comments, groups = "", [], {}, {}
    if source is not None:
        with open(source, encoding="utf-8") as file:
            text = file.read()
        purpose, usage = docstring_parts(text)
        comments, groups = setting_comments(text, defaults)
    lines = [textwrap.fill(purpose, HELP_WIDTH), ""] if purpose else []
    if usage:
        lines += ["usage:", *usage, ""]
    lines.append("settings, each given as --name=value (default shown):")
    # The comments start in one column, past the longest `--name=default` up to a point.
    width = 4 + min(max((len(_left_column(name, defaults, types_of_none_defaults))
                         for name in defaults), default=0), 32) + 2
    for name in defaults:
        if name in groups:
            lines.append(f"  {groups[name]}")
        left = _left_column(name, defaults, types_of_none_defaults)
        lines += _setting_lines(left, comments.get(name, ""), width)
    return "\n".join(lines)


def _left_column(name, defaults, types_of_none_defaults):
    default = defaults[name]
    wanted = types_of_none_defaults.get(name) if default is None else None
    return f"--{name}={default}" + (f" ({wanted.__name__})" if wanted else "")


def _setting_lines(left, comment, width):
    """`    --name=default   comment`, the comment wrapped under itself; a comment that would
    start right of a long name starts on the next line instead."""
    name, indent = f"    {left}", " " * width
    if not comment:
        return [name]
    if len(name) + 2 > width:
        return [name, *textwrap.wrap(comment, HELP_WIDTH, initial_indent=indent,
                                     subsequent_indent=indent)]
    return textwrap.wrap(comment, HELP_WIDTH, initial_indent=name.ljust(width),
                         subsequent_indent=indent)


def docstring_parts(text):
    """(first paragraph, joined into one line; the indented `python ...` lines) of the module
    docstring of a script's source text."""
    doc = ast.get_docstring(ast.parse(text)) or ""
    purpose = " ".join(doc.split("\n\n")[0].split())
    usage = [line for line in doc.splitlines()
             if line.startswith(" ") and line.strip().startswith("python ")]
    return purpose, usage


def setting_comments(text, names):
    """({name: its comment}, {name: the header of the group it starts}) of the settings `names`
    as declared in a script's source text.

    A setting is declared by an entry of a dict whose keys are exactly the settings
    (`"n": 64,  # images to draw`), else by a module-level assignment (`n = 64  # ...` or
    `n: int = 64  # ...`). Its comment is the one ending its last line, continued by the comment
    lines right below it that are indented, before or after the `#`. A comment line alone right
    above a setting, at its indentation and not so indented (`# optimizer`), heads a group.
    """
    by_row = _comments_by_row(text)
    comments, groups = {}, {}
    for name, (first, last, column) in _declarations(ast.parse(text), names).items():
        row, lines = last + 1, [by_row[last].text] if last in by_row else []
        while _continues(by_row.get(row), column):
            lines.append(by_row[row].text)
            row += 1
        comments[name] = " ".join(lines)
        header = by_row.get(first - 1)
        # Not a ruler such as `# -----`, nor the tail of the comment of the setting above.
        if (header and header.alone and header.column == column
                and not _continues(header, column) and any(c.isalnum() for c in header.text)):
            groups[name] = header.text
    return comments, groups


class _Comment:
    def __init__(self, token):
        self.column, self.string = token.start[1], token.string
        self.text = token.string.lstrip("#").strip()
        # Alone on its line: a group's header, or the continuation of the comment above.
        self.alone = not token.line[:self.column].strip()


def _comments_by_row(text):
    return {token.start[0]: _Comment(token)
            for token in tokenize.generate_tokens(io.StringIO(text).readline)
            if token.type == tokenize.COMMENT}


def _continues(comment, column):
    return bool(comment and comment.alone and (
        comment.column > column or comment.string.startswith("#  ")))


def _declarations(tree, names):
    """{name: (first line, last line, column)} of each setting's declaration (setting_comments)."""
    found = {}
    for node in tree.body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        for target in targets:
            if isinstance(target, ast.Name) and target.id in names:
                found.setdefault(target.id, (node.lineno, node.end_lineno, node.col_offset))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and _constant_keys(node) == set(names):
            found.update({key.value: (key.lineno, value.end_lineno, key.col_offset)
                          for key, value in zip(node.keys, node.values)})
    return found


def _constant_keys(node):
    keys = [key.value for key in node.keys if isinstance(key, ast.Constant)]
    return set(keys) if len(keys) == len(node.keys) else None


# ---- the rest ------------------------------------------------------------------------------------
def check_rules(config, rules):
    """Refuse the first setting that breaks its rule. rules: (name, test, allowed) triples, where
    test(value) says whether the value is allowed and `allowed` says in words what is."""
    for name, test, allowed in rules:
        if not test(config[name]):
            raise ConfigError(f"{name} must be {allowed}, not {config[name]!r}.")


def split_run_dir(argv, usage, default=None):
    """(run folder, the other arguments) of `python SCRIPT.py RUN_DIR [--key=value ...]`: the
    first argument when it is not a --key=value, else default (ConfigError saying usage when
    there is no default). With --help or -h anywhere, (default, every argument): parse_overrides,
    which comes next, prints the help, and asking for it needs no run folder."""
    if any(argument in HELP_FLAGS for argument in argv):
        return default, argv
    if argv and not argv[0].startswith("--"):
        return argv[0], argv[1:]
    if default is None:
        raise ConfigError(f"Give the run folder first: {usage}.")
    return default, argv


# What TensorFlow's libraries print while they load, before any log level applies: notices that
# every machine without an NVIDIA driver, or with oneDNN on, sees at each start.
LOAD_NOTICES = ("All log messages before absl::InitializeLog() is called",
                "Could not find cuda drivers on your machine", "oneDNN custom operations are on")


def quiet_tensorflow():
    """Keep TensorFlow's start-up chatter out of the output, and load Keras.

    TF_CPP_MIN_LOG_LEVEL=2 hides its C++ INFO and WARNING lines (the CPU-feature guard, ...).
    Where no NVIDIA driver can be loaded, 3 also hides the ERROR that its CUDA build logs on
    every CPU-only machine ("failed call to cuInit"); with a driver, errors stay visible, as
    they then say why a GPU is not used. A level the user set wins. What TensorFlow's libraries
    print while they load ignores the level (absl writes it before it is set up), so Keras is
    imported here with file descriptor 2 caught, and everything caught but LOAD_NOTICES is
    written out again: a warning that matters, or a failing import's own message, still shows.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if _nvidia_driver_loads() else "3")
    if "keras" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import keras  # loads its backend, TensorFlow unless KERAS_BACKEND says otherwise

            if keras.backend.backend() == "tensorflow":
                import tensorflow  # its libraries print as they load

                tensorflow.get_logger().addFilter(_not_retracing_advice)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines(keepends=True):
                if not any(notice in line for notice in LOAD_NOTICES):
                    sys.stderr.write(line)
            sys.stderr.flush()


def _not_retracing_advice(record):
    """False for TensorFlow's warning that a function "triggered tf.function retracing". The
    evaluation calls each network on batches of many sizes (ten digits for a figure, 500 for a
    measure, a last short batch); Keras's predict function relaxes the traced shape after a few
    of them (reduce_retracing), so the tracing is bounded, and the advice in the warning (define
    functions outside loops) is not the user's to act on."""
    return "triggered tf.function retracing" not in record.getMessage()


def _nvidia_driver_loads():
    # The library TensorFlow, JAX and PyTorch open to reach a GPU; loading it starts nothing.
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def run_command(main):
    """Run a command's main(argv) and exit with its code; an ExplainedError (ConfigError,
    DataError, RunError) becomes one paragraph on stderr and exit code 2."""
    try:
        sys.exit(main(sys.argv[1:]))
    except ExplainedError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
