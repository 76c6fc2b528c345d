"""One typed configuration (issue 11 item 1) and --tensor_parallel_size (item 3): the command line, the
TOML file and the VITA_* variables come from the option dataclasses; no engines are started here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.duplex.options import DuplexOptions
from engine.llm.engine import visible_devices_for_group
from engine.llm.options import LlmOptions
from server import cli
from server.config import options_by_name, walk
from server.options import ServerOptions, build_parser, parse_command_line, parse_options

TOKEN = "s3cret-token-for-the-test"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "vita.toml"
    path.write_text(text)
    return str(path)


def leaf_fields(cls: type, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every configurable leaf field of the options tree, found without server.config."""
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("config") is False:
            continue
        if callable(f.default_factory) and dataclasses.is_dataclass(f.default_factory):
            out += leaf_fields(f.default_factory, (*path, f.name))  # type: ignore[arg-type]
        else:
            out.append((*path, f.name))
    return out


def test_precedence_is_command_line_then_environment_then_file_then_default(tmp_path: Path) -> None:
    cfg = write(tmp_path, "max_users = 3\nport = 9001\nvad_threshold = 0.6\nno_tls = true\n")
    env = {"VITA_PORT": "9002", "VITA_VAD_THRESHOLD": "0.7", "VITA_UNRELATED": "x", "VITA_MODEL_DIR": "/m"}
    o = parse_options(["--config", cfg, "--vad_threshold", "0.8"], env)
    assert (o.max_users, o.port, o.vad.threshold, o.no_tls) == (3, 9002, 0.8, True)
    assert o.queue_size == ServerOptions().queue_size  # untouched: the default
    # a flag undoes a boolean that the file set
    cfg2 = write(tmp_path, "restart = false\nstreaming = false\n")
    o = parse_options(["--config", cfg2], {})
    assert o.restart.enabled is False and o.duplex.streaming is False
    o = parse_options(["--config", cfg2, "--restart", "--streaming"], {})
    assert o.restart.enabled is True and o.duplex.streaming is True
    assert parse_options(["--no_restart", "--no-streaming"], {}).restart.enabled is False
    assert parse_options([], {"VITA_NO_TLS": "yes", "VITA_ECHO_GUARD": "0"}).echo.guard is False


def test_access_token_sources_keep_their_order(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"VITA_ACCESS_TOKEN": "from-env"}
    assert parse_options([], env).security.access_token == "from-env"
    # a file named on the command line beats the variable, as before (no "contradict" error)
    o = parse_options(["--access_token_file", str(token_file)], env)
    assert o.security.access_token is None and o.security.access_token_file == str(token_file)
    assert cli.with_access_token(o).security.access_token == TOKEN
    with pytest.raises(SystemExit):  # both on one level still contradict
        parse_options(["--access_token", "a", "--access_token_file", str(token_file)], {})


@pytest.mark.parametrize(("text", "key"), [
    ("max_userz = 3\n", "max_userz"),
    ("[engine]\nnum_engines = 1\n", "engine"),
])
def test_unknown_key_in_the_file_is_an_error_naming_it(tmp_path: Path, capsys: Any, text: str, key: str) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_options(["--config", write(tmp_path, text)], {})
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"unknown option {key!r}" in err and "vita.toml" in err


@pytest.mark.parametrize(("argv", "env", "text", "named"), [
    ([], {}, 'max_users = "four"\n', "max_users: expected an integer"),
    ([], {}, "vad_threshold = true\n", "vad_threshold: expected a number"),
    ([], {}, 'no_tls = "yes"\n', "no_tls: expected true or false"),
    ([], {}, 'awakening = "sometimes"\n', "awakening: expected one of model, always"),
    ([], {}, "vad_threshold = 2.0\n", "threshold must be in (0, 1)"),
    ([], {}, "max_users = 3\nmax_users = 4\n", "not valid TOML"),
    ([], {"VITA_MAX_USERS": "many"}, "", "$VITA_MAX_USERS: expected an integer"),
    ([], {"VITA_NO_TLS": "perhaps"}, "", "$VITA_NO_TLS: expected true or false"),
    (["--max_users", "many"], {}, "", "argument --max_users/--max-users: expected an integer"),
    (["--tensor_parallel_size", "2", "--devices", "cuda:0,cuda:1"], {}, "", "tensor_parallel_size=2 devices"),
])
def test_bad_values_exit_2_naming_the_option(tmp_path: Path, capsys: Any, argv: list[str], env: dict[str, str],
                                             text: str, named: str) -> None:
    cfg = ["--config", write(tmp_path, text)] if text else []
    with pytest.raises(SystemExit) as exc:
        parse_options([*cfg, *argv], env)
    assert exc.value.code == 2
    assert named in capsys.readouterr().err


def test_missing_config_file_is_an_error(tmp_path: Path, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_options(["--config", str(tmp_path / "nope.toml")], {})
    assert exc.value.code == 2 and "nope.toml" in capsys.readouterr().err


def test_print_config_round_trips_and_masks_the_token(tmp_path: Path, capsys: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITA_MAX_FRAMES", "3")
    argv = ["--access_token", TOKEN, "--max_users", "5", "--devices", "cuda:0,cuda:1", "--tts_seed", "none",
            "--allowed_hosts", 'a.example,"quoted"\\', "--no-echo_guard", "--vad_threshold", "0.55",
            "--awakening", "always", "--record_dir", "/tmp/rec"]
    assert cli.main(["--print-config", *argv]) == 0
    text = capsys.readouterr().out
    assert TOKEN not in text and "# access_token = (set; masked)" in text
    expected = parse_options(argv)
    loaded = parse_options(["--config", write(tmp_path, text)], {})
    assert loaded.security.access_token is None  # the secret is not written, so not read back
    assert loaded == dataclasses.replace(expected, security=dataclasses.replace(expected.security, access_token=None))
    assert loaded.duplex.max_frames == 3 and loaded.duplex.tts_seed is None and loaded.llm.devices == ("cuda:0", "cuda:1")
    # the defaults print and load back too
    assert cli.main(["--print-config"]) == 0
    assert parse_options(["--config", write(tmp_path, capsys.readouterr().out)], {}) == parse_options([])


def test_print_config_does_not_need_the_token_file(tmp_path: Path, capsys: Any) -> None:
    missing = str(tmp_path / "missing-token")
    assert cli.main(["--print-config", "--access_token_file", missing]) == 0
    assert f'access_token_file = "{missing}"' in capsys.readouterr().out
    assert parse_command_line(["--print_config"], {}).print_config


def test_every_field_is_an_option_with_its_default_in_help() -> None:
    table = options_by_name(ServerOptions)  # raises on a name defined twice
    leaves = leaf_fields(ServerOptions)
    assert sorted(o.path for o in table.values()) == sorted(leaves)
    text = build_parser().format_help()
    for name, opt in table.items():
        assert f"--{name}" in text, name
        assert opt.help, name
    assert text.count("(default:") == len(table) + 2  # and --config, --print-config
    flags = [s for a in build_parser()._actions for s in a.option_strings]
    assert len(flags) == len(set(flags))


def test_nothing_is_defined_twice_and_test_settings_are_not_options() -> None:
    names = [f.name for cls in (LlmOptions, DuplexOptions) for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)), "a value both engine layers use is defined in only one"
    every_field = {path[-1] for path in leaf_fields(ServerOptions)} | {path[-2] for path in leaf_fields(ServerOptions)
                                                                      if len(path) > 1}
    for test_only in ("judge_states", "stream_mode", "reference"):
        assert test_only not in every_field

    @dataclasses.dataclass(frozen=True)
    class Twice:
        a: LlmOptions = dataclasses.field(default_factory=LlmOptions, metadata={"prefix": ""})
        b: LlmOptions = dataclasses.field(default_factory=LlmOptions, metadata={"prefix": ""})

    with pytest.raises(TypeError, match="defined twice"):
        options_by_name(Twice)
    assert len(list(walk(LlmOptions))) == len(dataclasses.fields(LlmOptions)) - 1  # model_path: set by the launcher


def test_engine_options_come_from_the_configuration(tmp_path: Path) -> None:
    o = parse_options(["--max_new_tokens", "100", "--history_turns", "2", "--kv_cache_mb", "64"], {})
    llm, duplex = cli.llm_and_duplex_options(o, tmp_path, tiny=False, on_cpu=True)
    assert (llm.model_path, llm.max_new_tokens, llm.history_turns, duplex.awakening) == (tmp_path, 100, 2, "model")
    assert llm.kv_cache_bytes(on_cpu=True) == 64 << 20
    llm, duplex = cli.llm_and_duplex_options(parse_options([], {}), tmp_path, tiny=True, on_cpu=True)
    assert (llm.max_model_len, llm.max_new_tokens, llm.enforce_eager, duplex.awakening) == (2048, 64, True, "always")
    _, duplex = cli.llm_and_duplex_options(parse_options(["--awakening", "model"], {}), tmp_path, tiny=True,
                                           on_cpu=True)
    assert duplex.awakening == "model"
    assert LlmOptions().kv_cache_bytes(on_cpu=True) == 512 << 20 and LlmOptions().kv_cache_bytes(on_cpu=False) is None
    assert (parse_options([], {}).restart.max_attempts, parse_options(["--restart_max_attempts", "0"], {})
            .restart.max_attempts) == (10, 0)


def test_tensor_parallel_size_and_device_groups_reach_the_engine(tmp_path: Path) -> None:
    o = parse_options(["--tensor_parallel_size", "2", "--devices", "cuda:0+cuda:1,cuda:2+cuda:3"], {})
    assert o.llm.tensor_parallel_size == 2 and o.llm.devices == ("cuda:0+cuda:1", "cuda:2+cuda:3")
    assert visible_devices_for_group("cuda:0+cuda:1", None) == "0,1"
    assert visible_devices_for_group("cuda:1+cuda:2", "4,5,6,7") == "5,6"  # counted within the visible list
    assert visible_devices_for_group("cuda:3", "4,5,6,7") == "7" and visible_devices_for_group("", None) is None
    for bad in ("cuda:0+cuda:0", "cuda:0+cpu", "cuda:0+cuda:9"):
        with pytest.raises(ValueError):
            visible_devices_for_group(bad, "0,1")
    pytest.importorskip("vllm")
    from engine.llm.engine import engine_args

    for tp in (1, 2, 4, 8):
        llm = dataclasses.replace(parse_options(["--tensor_parallel_size", str(tp)], {}).llm, model_path=tmp_path)
        resolved = SimpleNamespace(folder=tmp_path, has_tokenizer=True)
        args = engine_args(llm, resolved, tmp_path / "served", on_cpu=False)  # type: ignore[arg-type]
        assert args.tensor_parallel_size == tp
        assert (args.gpu_memory_utilization, args.kv_cache_memory_bytes, args.max_model_len) == (0.42, None, 8192)
