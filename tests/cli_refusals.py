"""How a bad ``jaxqfl run`` flag must be refused: exit 2, the message on stderr, no folder, nothing built."""
import pytest


def assert_refused_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    import jaxqfl.engine
    from jaxqfl.cli.main import main

    def no_build(*a, **k):  # the refusal must come before the round program is built
        raise AssertionError("engine.build was called for a bad flag")

    monkeypatch.setattr(jaxqfl.engine, "build", no_build)
    monkeypatch.setattr(jaxqfl.engine, "build_sweep", no_build)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["run", "--out", str(out), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
