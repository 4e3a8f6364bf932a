import pytest

from plumbing.command_line import parse_overrides
from plumbing.errors import ConfigError

DEFAULTS = {"epochs": 10, "learning_rate": 1e-3, "optimizer": "rmsprop", "overwrite": False,
            "data_path": None, "train_subset": None}
NONE_TYPES = {"data_path": str, "train_subset": int}


def test_overrides_are_parsed_to_the_defaults_types():
    config = parse_overrides(DEFAULTS, ["--epochs=3", "--learning_rate=5e-4", "--optimizer=adam",
                                        "--overwrite=True", "--data_path=a.npz",
                                        "--train_subset=100"], NONE_TYPES)
    assert config == {"epochs": 3, "learning_rate": 5e-4, "optimizer": "adam", "overwrite": True,
                      "data_path": "a.npz", "train_subset": 100}
    assert parse_overrides(DEFAULTS, [], NONE_TYPES) == DEFAULTS
    assert parse_overrides(DEFAULTS, ["--train_subset=None"], NONE_TYPES)["train_subset"] is None


@pytest.mark.parametrize("argv, message", [
    (["--epoch=3"], "Unknown hyperparameter 'epoch'. Did you mean 'epochs'?"),
    (["--learning-rate=0.1"], "Did you mean 'learning_rate'?"),
    (["--zzz=1"], r"Unknown hyperparameter 'zzz'. Known ones: data_path, epochs"),
    (["--epochs", "3"], "Write --epochs=3: a setting's value follows '='"),
    (["--epochs"], "Write --epochs=VALUE, for example --epochs=10"),
    (["--epoch", "3"], "Did you mean 'epochs'?"),
    (["--epochs=three"], "expected an integer"),
    (["--epochs=2.5"], "expected an integer"),
    (["--learning_rate=fast"], "expected a finite number"),
    (["--learning_rate=nan"], "expected a finite number"),
    (["--overwrite=yes"], "True or False"),
    (["--train_subset=many"], "an integer or None"),
    (["epochs=3"], "--key=value"),
])
def test_bad_overrides_are_refused(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(DEFAULTS, argv, NONE_TYPES)


def test_the_latent_size_left_as_none_is_the_articles_or_an_inspection_sets(tmp_path):
    import train
    from plumbing.train_config import ARTICLE_LATENT_DIM, INSPECTION_LATENT_DIM, read_config

    def latent_dim(*argv):
        # A new out_dir unless one is given: the working folder's outputs/ may hold a run
        # (the README's first command leaves one there).
        argv = [f"--out_dir={tmp_path / 'new_run'}", *argv]
        return read_config(train.HYPERPARAMETERS, train.__annotations__, argv)["latent_dim"]

    inspection, plain = tmp_path / "bottle", tmp_path / "photos"
    for folder in (inspection / "train" / "good", inspection / "test" / "good", plain / "cats"):
        folder.mkdir(parents=True)
    assert latent_dim() == ARTICLE_LATENT_DIM  # MNIST, the article's experiment
    assert latent_dim(f"--dataset={plain}") == ARTICLE_LATENT_DIM
    assert latent_dim(f"--dataset={inspection}") == INSPECTION_LATENT_DIM != ARTICLE_LATENT_DIM
    assert latent_dim(f"--dataset={inspection}", "--latent_dim=3") == 3  # as set, always
    assert latent_dim(f"--dataset={tmp_path / 'missing'}") == 2  # refused later, by the loader
    # A run in out_dir resumes with the size it recorded (one made before inspection sets had
    # their own size recorded 2), unless it is to be overwritten.
    old_run = tmp_path / "old_run"
    old_run.mkdir()
    (old_run / "config.json").write_text('{"latent_dim": 2}')
    assert latent_dim(f"--dataset={inspection}", f"--out_dir={old_run}") == 2
    assert latent_dim(f"--dataset={inspection}", f"--out_dir={old_run}",
                      "--overwrite=True") == INSPECTION_LATENT_DIM
    # A run of another dataset there (MNIST's, say) is no run of this one to resume.
    (old_run / "config.json").write_text('{"latent_dim": 2, "dataset": "mnist"}')
    assert latent_dim(f"--dataset={inspection}", f"--out_dir={old_run}") == INSPECTION_LATENT_DIM
    (old_run / "config.json").write_text("not json")  # prepare_out_dir refuses it, in words
    assert latent_dim(f"--dataset={inspection}", f"--out_dir={old_run}") == INSPECTION_LATENT_DIM


def test_a_keras_datasets_name_or_an_unreadable_folder_is_no_inspection_set(tmp_path,
                                                                             monkeypatch):
    import train
    from plumbing import image_files
    from plumbing.inspection_folders import is_inspection_folder
    from plumbing.train_config import read_config

    # A folder named like a Keras dataset, in the MVTec layout, in the working directory: the
    # name still means the Keras dataset, as data.load_dataset reads it.
    for folder in (tmp_path / "mnist" / "train" / "good", tmp_path / "mnist" / "test"):
        folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert is_inspection_folder("mnist")
    config = read_config(train.HYPERPARAMETERS, train.__annotations__, ["--dataset=mnist"])
    assert config["latent_dim"] == 2

    def unreadable(folder):
        raise PermissionError(f"cannot list {folder}")

    monkeypatch.setattr(image_files, "subfolders", unreadable)
    assert not is_inspection_folder(str(tmp_path / "mnist"))
