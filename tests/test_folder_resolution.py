"""A user's own folder is decoded at its images' own size (median shorter side, capped), with a note."""

import numpy as np
from PIL import Image

from leanssl.data.formats.folder import FOLDER_MAX_RESOLUTION
from leanssl.data.sources import open_dataset


def _folder(root, sizes):
    for i, (w, h) in enumerate(sizes):
        path = root / ("a" if i % 2 else "b") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((h, w, 3), 10 * i, np.uint8)).save(path)
    return root


def test_folder_default_is_the_median_shorter_side_capped_and_resolution_overrides(tmp_path, capsys):
    small = _folder(tmp_path / "small", [(32, 40)] * 5 + [(24, 24)] * 2 + [(200, 100)] * 3)  # shorter sides: 32×5, 24×2, 100×3
    ds = open_dataset(str(small), cache_dir=tmp_path / "cache", progress=False)
    assert ds.resolution == 32 and ds.train.x.shape[-2:] == (32, 32)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at 32 px" in err and "--resolution overrides" in err
    big = _folder(tmp_path / "big", [(300, 200)] * 4)
    assert open_dataset(str(big), cache_dir=tmp_path / "cache", progress=False).resolution == FOLDER_MAX_RESOLUTION == 64
    capsys.readouterr()
    assert open_dataset(str(small), 16, cache_dir=tmp_path / "cache", progress=False).resolution == 16
    assert capsys.readouterr().err == ""  # an explicit resolution: no note
