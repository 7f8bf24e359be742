"""`tokensmith ui`: the launcher's command line, its checks and its help."""

import socket

import pytest

from studio.cli import build_parser, main
from studio.cli_ui import APP_PATH, check_port_free, streamlit_command


def test_streamlit_command_is_headless_local_and_without_telemetry():
    command = streamlit_command(host="127.0.0.1", port=8642)
    assert command[1:4] == ["-m", "streamlit", "run"] and command[4] == str(APP_PATH)
    flags = dict(zip(command[5::2], command[6::2], strict=True))
    assert flags["--server.headless"] == "true"
    assert flags["--server.address"] == "127.0.0.1" and flags["--server.port"] == "8642"
    assert flags["--browser.gatherUsageStats"] == "false"
    assert flags["--runner.magicEnabled"] == "false"
    assert APP_PATH.is_file()


def test_ui_options_default_to_localhost_8501():
    args = build_parser().parse_args(["ui"])
    assert (args.host, args.port) == ("127.0.0.1", 8501)
    args = build_parser().parse_args(["ui", "--port", "9000", "--host", "0.0.0.0", "--home", "h"])
    assert (args.host, args.port, args.home) == ("0.0.0.0", 9000, "h")


def test_port_in_use_is_one_clear_error(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match="pass --port N"):
            check_port_free("127.0.0.1", port)
        assert main(["ui", "--port", str(port)]) == 1
    assert "tokensmith ui: error: cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_out_of_range_port_is_refused():
    with pytest.raises(ValueError, match="not a TCP port"):
        check_port_free("127.0.0.1", 70000)


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["ui", "--help"])
    assert "Example" in capsys.readouterr().out


@pytest.mark.parametrize("port", [80, 1023])
def test_system_ports_are_refused_as_the_message_says(port):
    with pytest.raises(ValueError, match="between 1024 and 65535"):
        check_port_free("127.0.0.1", port)


def test_unknown_host_says_it_cannot_be_resolved(capsys):
    with pytest.raises(OSError, match=r"cannot resolve --host 'nosuchhost\.invalid'"):
        check_port_free("nosuchhost.invalid", 8642)
    assert main(["ui", "--host", "nosuchhost.invalid", "--port", "8642"]) == 1
    assert "in use" not in capsys.readouterr().err
