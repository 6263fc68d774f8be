"""The `cxr` command: help everywhere, one-line errors, non-zero exits."""

import subprocess
import sys

import pytest

from cxrlib import __version__
from cxrlib.cli import INTERNAL_ERROR_HINT, build_parser, main


def _cxr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cxrlib.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_version(capsys):
    with pytest.raises(SystemExit) as code:
        main(["--version"])
    assert code.value.code == 0
    assert capsys.readouterr().out.strip() == f"cxr {__version__}"


def _subcommand_paths(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommand_paths(sub, (*prefix, name))


@pytest.mark.parametrize("path", list(_subcommand_paths(build_parser())), ids=" ".join)
def test_every_subcommand_has_help(path, capsys):
    with pytest.raises(SystemExit) as code:
        main([*path, "--help"])
    assert code.value.code == 0
    assert "usage: cxr" in capsys.readouterr().out


def test_workbook_readme_is_listed_and_its_old_name_report_is_not(capsys):
    with pytest.raises(SystemExit):
        main(["workbook", "--help"])
    listed = capsys.readouterr().out
    assert "readme" in listed and "report" not in listed


def test_phantom_rejects_bad_numbers(capsys):
    with pytest.raises(SystemExit) as code:
        main(["phantom", "--out", "x", "--n", "0"])
    assert code.value.code == 2
    assert "--n: expected a positive integer, got '0'" in capsys.readouterr().err


def test_phantom_out_is_a_file_one_line_error(tmp_path, capsys):
    afile = tmp_path / "taken"
    afile.write_text("")
    assert main(["phantom", "--out", str(afile), "--n", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cxr: error: --out {afile} exists and is not a folder"]


def test_traceback_only_with_debug(tmp_path):
    afile = tmp_path / "taken"
    afile.write_text("")
    plain = _cxr("phantom", "--out", str(afile), "--n", "2")
    assert plain.returncode == 1
    assert "Traceback" not in plain.stderr
    debug = _cxr("--debug", "phantom", "--out", str(afile), "--n", "2")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


@pytest.mark.parametrize("bug", [ValueError, TypeError, KeyError])
def test_any_other_exception_is_shown_as_a_bug(tmp_path, capsys, monkeypatch, bug):
    # docs/architecture.md, "Errors: one rule": CxrError is the user's, anything else ours
    import cxrlib.experiment.results as results

    def misuse(*args, **kwargs):
        raise bug("an argument the library never accepts")

    monkeypatch.setattr(results, "update_readme", misuse)
    assert main(["workbook", "readme", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"cxr: internal error (a bug): {bug.__name__}: ")
    assert "never accepts" in err[0]
    assert err[1] == INTERNAL_ERROR_HINT
    assert main(["--debug", "workbook", "readme", str(tmp_path)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_user_error_is_one_line_without_the_bug_hint(tmp_path, capsys):
    assert main(["workbook", "readme", str(tmp_path), "--readme", str(tmp_path / "no.md")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cxr: error: {tmp_path / 'no.md'}: file does not exist"]


def test_phantom_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "ph"
    assert main(["phantom", "--out", str(out), "--n", "3", "--seed", "1", "--size", "64"]) == 0
    assert "wrote 3 phantom images" in capsys.readouterr().out
    assert (out / "manifest.csv").is_file()
    assert len(list((out / "images").glob("*.png"))) == 3


def test_workbook_unknown_profile(capsys):
    with pytest.raises(SystemExit) as code:
        main(["workbook", "run", "--profile", "huge"])
    assert code.value.code == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_workbook_missing_manifest_one_line(tmp_path, capsys):
    code = main(
        ["workbook", "run", "--profile", "smoke", "--out", str(tmp_path / "r"),
         "--manifest", str(tmp_path / "absent.csv")]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.csv does not exist" in err[0]


@pytest.mark.parametrize("seeds", ["1", "1,1", "a,b", "-1,2"])
def test_workbook_seeds_must_be_two_or_more_different_seeds(seeds, capsys):
    with pytest.raises(SystemExit) as code:
        main(["workbook", "run", "--profile", "smoke", "--seeds", seeds])
    assert code.value.code == 2
    assert "--seeds" in capsys.readouterr().err


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as code:
        main([])
    assert code.value.code == 2


def test_building_the_parser_imports_neither_torch_nor_the_library():
    """`cxr --help` stays fast: the choices come from the vocabulary and the configs,
    which load no torch; the library proper is imported only by a command that runs."""
    code = (
        "import sys; from cxrlib.cli import build_parser; build_parser().format_help(); "
        "heavy = [m for m in ('torch', 'transformers', 'pandas', "
        "'cxrlib.experiment.workbook') if m in sys.modules]; print(heavy)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_lazy_choices_still_refuse_an_unknown_profile_and_list_the_known_ones(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--profile", "nope", "--out", "x"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "'smoke'" in err and "'default'" in err
    args = build_parser().parse_args(
        ["train", "--profile", "smoke", "--mode", "strict", "--out", "x"]
    )
    assert (args.profile, args.mode) == ("smoke", "strict")
