"""The config file: ``NAME=value`` lines under the environment, refused when unsafe or wrong.

Each problem must be one line naming the file and the line, and never the value (it may be a
key). The command-line cases run ``main`` in this process and read its stderr.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from strongroom.config import CONFIG_FILE_VAR, config_from_env
from strongroom.core.crypto import generate_key
from strongroom.errors import ConfigError
from strongroom.interfaces.cli import config_file_option, main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """None of the developer's strongroom variables may leak into these cases."""
    for name in list(os.environ):
        if name.startswith(("BACKUP_", "STRONGROOM_", "R2_", "B2_", "DATABASE_URL")):
            monkeypatch.delenv(name)
    yield


def _file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "strongroom.conf"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def _error(path: Path | str) -> str:
    with pytest.raises(ConfigError) as err:
        config_from_env(str(path))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_lines_comments_export_and_quotes(tmp_path: Path) -> None:
    key = generate_key()
    path = _file(
        tmp_path,
        "# strongroom for the archive_command\n"
        "\n"
        f"BACKUP_ENCRYPTION_KEY={key}\n"
        "export BACKUP_LOCAL_PATH = '/srv/backups/with # and spaces'\n"
        'STRONGROOM_LOCATIONS="local,r2"\n'
        "   R2_PART_RETRIES=0\n"
        "DATABASE_URL=postgresql://backup@db:5432/shop?application_name=a=b\n",
    )
    config = config_from_env(str(path))
    assert config.encryption_key == key
    assert config.location("local").options["path"] == "/srv/backups/with # and spaces"
    assert [s.name for s in config.locations] == ["local", "r2"]
    assert config.location("r2").options["part_retries"] == 0
    assert config.database_url == "postgresql://backup@db:5432/shop?application_name=a=b"


def test_the_environment_wins_over_the_file_and_blank_variables_do_not_hide_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path, "BACKUP_COMPRESSION=gzip\nBACKUP_RESTORE_JOBS=6\nBACKUP_LOCAL_PATH=/f\n")
    monkeypatch.setenv("BACKUP_COMPRESSION", "zstd")
    monkeypatch.setenv("BACKUP_LOCAL_PATH", "  ")
    config = config_from_env(str(path))
    assert (config.codec, config.restore_jobs) == ("zstd", 6)
    assert config.location("local").options["path"] == "/f"


def test_strongroom_config_names_the_file_and_the_option_wins_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _file(tmp_path, "BACKUP_RESTORE_JOBS=3\n")
    other = tmp_path / "other.conf"
    other.write_text("BACKUP_RESTORE_JOBS=5\n", encoding="utf-8")
    monkeypatch.setenv(CONFIG_FILE_VAR, str(first))
    assert config_from_env().restore_jobs == 3
    assert config_from_env(str(other)).restore_jobs == 5
    assert config_file_option(["-v", "--config", str(other), "list"]) == str(other)
    assert config_file_option([f"--config={other}", "check"]) == str(other)
    assert config_file_option(["list"]) is None


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_file_with_the_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key = generate_key()
    path = _file(tmp_path, f"BACKUP_ENCRYPTION_KEY={key}\n", mode)
    message = _error(path)
    assert message == f"{path} is readable by group or others: chmod 600 {path}"
    assert key not in message


def test_credentials_count_as_secrets_and_settings_without_any_do_not(tmp_path: Path) -> None:
    path = _file(tmp_path, "R2_SECRET_ACCESS_KEY=s3cr3t\n", 0o644)
    assert "chmod 600" in _error(path)
    path.write_text("BACKUP_RESTORE_JOBS=4\nR2_ACCESS_KEY_ID=id\n", encoding="utf-8")
    assert config_from_env(str(path)).restore_jobs == 4


def test_a_missing_file_is_one_line(tmp_path: Path) -> None:
    assert (
        _error(tmp_path / "absent.conf") == f"config file {tmp_path / 'absent.conf'} does not exist"
    )


def test_an_unknown_name_gives_the_line_and_the_closest_known_name(tmp_path: Path) -> None:
    path = _file(tmp_path, "# ok\nR2_PART_RETRIES=2\nB2_PART_RETRYS=3\n")
    assert (
        _error(path)
        == f"{path}, line 3: unknown setting B2_PART_RETRYS (did you mean B2_PART_RETRIES?)"
    )
    path.write_text("PGPASSWORD=hunter2\n", encoding="utf-8")
    assert _error(path) == f"{path}, line 1: unknown setting PGPASSWORD"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("BACKUP_ENCRYPTION_KEY abcdef-secret", "expected NAME=value"),
        ("=abcdef-secret", "expected NAME=value"),
        ("9LIVES=abcdef-secret", "expected NAME=value"),
        ("BACKUP_ENCRYPTION_KEY='abcdef-secret", "the value's closing ' is missing"),
        ("BACKUP_ENCRYPTION_KEY=\"abcdef-secret'", "the value's closing \" is missing"),
    ],
)
def test_a_malformed_line_gives_its_number_and_never_its_value(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = _file(tmp_path, f"BACKUP_RESTORE_JOBS=2\n\n{line}\n")
    message = _error(path)
    assert message == f"{path}, line 3: {problem}"
    assert "abcdef-secret" not in message


def test_a_name_set_twice_is_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, "BACKUP_RESTORE_JOBS=2\nBACKUP_RESTORE_JOBS=3\n")
    assert _error(path) == f"{path}, line 2: BACKUP_RESTORE_JOBS is already set on line 1"


def test_a_value_that_is_wrong_is_reported_like_an_environment_variable(tmp_path: Path) -> None:
    path = _file(tmp_path, "B2_READ_TIMEOUT=1m\n")
    assert _error(path) == "B2_READ_TIMEOUT must be a number of seconds, got '1m'"


def test_the_command_prints_one_error_line_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_key()
    path = _file(tmp_path, f"BACKUP_ENCRYPTION_KEY={key}\n", 0o644)
    assert main(["--config", str(path), "list"]) == 2
    err = capsys.readouterr().err
    assert err == f"strongroom: error: {path} is readable by group or others: chmod 600 {path}\n"
    assert main(["--config", str(tmp_path / "nope"), "backup"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"strongroom: error: config file {tmp_path / 'nope'} does not exist"
    ]
