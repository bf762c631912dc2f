"""The Label Studio round trip (``python -m benchmarks.labelstudio_roundtrip``) needs Label Studio in a
venv of its own (scripts/install_labelstudio.sh) and about 2-3 minutes, most of them Label Studio's
start, so it is a script run by hand, not part of the suite; docs/annotation.md records its last run.
Here: what it says without that venv, and the pieces that need no server."""

import numpy as np

from benchmarks import labelstudio_roundtrip


def test_without_label_studio_it_fails_in_one_line_naming_the_install_script(tmp_path, capsys):
    assert labelstudio_roundtrip.main(["--venv", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"FAIL: no Label Studio in '{tmp_path / 'nowhere'}': run bash scripts/install_labelstudio.sh"]


def test_the_annotator_paints_one_pixel_past_the_query_mask():
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True
    grown = labelstudio_roundtrip._dilate(mask)
    assert sorted(zip(*np.nonzero(grown))) == [(0, 2), (1, 1), (1, 2), (1, 3), (2, 2)]
