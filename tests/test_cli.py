"""The command line, against the test store."""

from __future__ import annotations

import durablenb as dnb
from durablenb.cli import main


def test_cli_verbs(schema, capsys):
    @dnb.step
    def s(i):
        return i

    @dnb.workflow
    def wf():
        return [s(0), s(1)]

    wf()
    wid = wf.id_for()
    assert main(["list"]) == 0
    assert wid in capsys.readouterr().out
    assert main(["steps", wid]) == 0
    assert capsys.readouterr().out.count("succeeded") == 2
    assert main(["timeline", wid]) == 0
    assert main(["info"]) == 0
    assert "1 succeeded" in capsys.readouterr().out
    assert main(["fork", wid, "--from-step", "1"]) == 0
    assert "[0, 1]" in capsys.readouterr().out
    assert main(["gc", "--older-than", "7d"]) == 0
    assert main(["gc", "--older-than", "7x"]) == 1
    assert "cannot read the duration" in capsys.readouterr().err
    assert main(["steps", "no-such-workflow"]) == 1  # unknown, as for every verb
    assert main(["forget", "no-such-workflow"]) == 1
    assert "no workflow" in capsys.readouterr().err
    assert main(["forget", wid]) == 0
