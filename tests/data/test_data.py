import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from brainvq.data.checks import check_data
from brainvq.data.dataset import check_no_leak, find_leaks, load_split
from brainvq.data.images import read_png, select_records
from brainvq.data.layout import image_dir, mask_dir, scan_split
from brainvq.errors import DataError


@pytest.fixture
def small_root(tmp_path: Path, phantom_root: Path) -> Path:
    """A writable copy of two phantom subjects' train/validate slices (with masks)."""
    root = tmp_path / "data"
    for split in ("train", "validate"):
        for folder in (image_dir, mask_dir):
            source, target = folder(phantom_root, split), folder(root, split)
            target.mkdir(parents=True)
            for path in sorted(source.iterdir()):
                if (
                    path.name.startswith(("case_001_", "seg_001_", "case_005_", "seg_005_"))
                    and int(path.name.split("_")[3].split(".")[0]) < 8
                ):
                    shutil.copy(path, target / path.name)
    return root


def test_items_from_oasis_layout(phantom_root: Path) -> None:
    dataset = load_split(phantom_root, "train", with_masks=True)
    assert len(dataset) == 4 * 32
    item = dataset[5]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
    assert item["split"] == "train" and item["subject"] == 1 and Path(item["path"]).name.startswith("case_001_")
    assert item["mask"].dtype == torch.int64 and set(item["mask"].unique().tolist()) <= {0, 1, 2, 3}
    batch = dataset.__getitems__([0, 1, 2])
    assert batch["image"].shape == (3, 1, 64, 64) and batch["mask"].shape == (3, 64, 64)
    assert dataset.pixels is not None and dataset.pixels.dtype == np.uint8


def test_lazy_and_in_memory_agree(phantom_root: Path) -> None:
    eager = load_split(phantom_root, "validate")
    lazy = load_split(phantom_root, "validate", in_memory=False)
    assert lazy.pixels is None
    assert torch.equal(eager.images([0, 7, 31]), lazy.images([0, 7, 31]))


def test_subsets_are_deterministic(phantom_root: Path) -> None:
    records = scan_split(phantom_root, "train").records
    by_subject = select_records(records, 2, None)
    assert {r.subject for r in by_subject} == {1, 2} and len(by_subject) == 64
    spread = select_records(records, None, 10)
    assert spread == select_records(records, None, 10) and len(spread) == 10
    assert len({r.subject for r in spread}) == 4  # spread over all subjects
    dataset = load_split(phantom_root, "train", limit_subjects=1, limit_images=5)
    assert len(dataset) == 5


def test_plain_folder_splits_by_a_seeded_stated_fraction(tmp_path: Path) -> None:
    for i in range(20):
        Image.fromarray(np.full((16, 16), 10 * i, dtype=np.uint8)).save(tmp_path / f"img{i:02d}.png")
    train, validate = load_split(tmp_path, "train"), load_split(tmp_path, "validate")
    assert len(train) == 18 and len(validate) == 2 and train[0]["subject"] == -1 and train[0]["slice"] == -1
    names = lambda d: {r.path.name for r in d.records}  # noqa: E731
    assert not names(train) & names(validate)  # issue 9.4: validate is never the training images
    assert names(validate) == names(load_split(tmp_path, "validate"))  # seeded: the same every time
    assert len(load_split(tmp_path, "all")) == 20
    with pytest.raises(DataError, match="plain folder of PNGs has the splits 'train' and 'validate'"):
        load_split(tmp_path, "test")
    assert check_data(tmp_path)["layout"] == "folder"


def test_16_bit_png_is_scaled(tmp_path: Path) -> None:
    array = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(3, 0)
    Image.fromarray(array).save(tmp_path / "deep.png")
    assert read_png(tmp_path / "deep.png").dtype == np.uint16
    dataset = load_split(tmp_path, "all")
    values = dataset.images([0])[0, 0, 0]
    assert values.tolist() == pytest.approx([0.0, 32768 / 65535, 1.0])


@pytest.mark.parametrize("in_memory", [True, False])
def test_12_bit_data_in_16_bit_pngs_is_scaled_by_its_bit_depth(tmp_path: Path, in_memory: bool) -> None:
    # issue 9.5: a 12-bit MRI export (0..4095) must not land near black (it used to be divided by 65535)
    for i, top in enumerate((4095, 2000)):
        array = np.array([[0, top // 2, top]], dtype=np.uint16).repeat(4, 0)
        Image.fromarray(array).save(tmp_path / f"slice{i}.png")
    dataset = load_split(tmp_path, "all", in_memory=in_memory)
    assert dataset.images([0])[0, 0, 0].tolist() == pytest.approx([0.0, 2047 / 4095, 1.0])
    assert dataset.images([1])[0, 0, 0, 2].item() == pytest.approx(2000 / 4095)  # one scale for the dataset
    assert check_data(tmp_path)["splits"]["all"]["intensity_range"] == pytest.approx([0.0, 1.0])


def test_rgb_with_equal_channels_is_gray(tmp_path: Path) -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 255)]), mode="RGBA").save(
        tmp_path / "rgba.png"
    )
    assert np.array_equal(read_png(tmp_path / "rgb.png"), gray)
    assert np.array_equal(read_png(tmp_path / "rgba.png"), gray)


# ----------------------------------------------------------------------------- bad input
def _first_image(root: Path, split: str = "train") -> Path:
    return image_dir(root, split) / "case_001_slice_0.nii.png"


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: data root does not exist"):
        load_split(tmp_path / "nowhere", "train")


def test_missing_split(small_root: Path) -> None:
    with pytest.raises(
        DataError, match=r"keras_png_slices_test: split 'test' is missing \(splits found: train, validate\)"
    ):
        load_split(small_root, "test")


def test_empty_split(small_root: Path) -> None:
    shutil.rmtree(mask_dir(small_root, "train"))
    for path in image_dir(small_root, "train").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"keras_png_slices_train: split 'train' is empty"):
        load_split(small_root, "train")


def test_non_png_file(small_root: Path) -> None:
    (image_dir(small_root, "train") / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"notes.txt: not a PNG file"):
        load_split(small_root, "train")


def test_png_name_but_not_png(small_root: Path) -> None:
    path = _first_image(small_root)
    path.write_bytes(b"GIF89a not really")
    with pytest.raises(DataError, match=rf"{path.name}: not a PNG file \(bad signature\)"):
        load_split(small_root, "train")


def test_truncated_png(small_root: Path) -> None:
    path = _first_image(small_root)
    path.write_bytes(path.read_bytes()[:120])
    with pytest.raises(DataError, match=rf"{path.name}: corrupt or truncated PNG"):
        load_split(small_root, "train")


def test_colour_image(small_root: Path) -> None:
    path = _first_image(small_root)
    rgb = np.zeros((64, 64, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(path)
    with pytest.raises(DataError, match=rf"{path.name}: colour image \(mode RGB with unequal channels\)"):
        load_split(small_root, "train")


def test_mixed_sizes(small_root: Path) -> None:
    path = image_dir(small_root, "train") / "case_001_slice_3.nii.png"
    Image.fromarray(np.zeros((32, 64), dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match=rf"{path.name}: image size 64x32 differs from 64x64"):
        load_split(small_root, "train")
    report = check_data(small_root)
    assert any("image size 64x32 differs" in p for p in report["problems"])


def test_mask_without_image(small_root: Path) -> None:
    image = _first_image(small_root)
    image.unlink()
    with pytest.raises(DataError, match=rf"seg_001_slice_0.nii.png: mask has no image \(.*{image.name}\)"):
        load_split(small_root, "train")


def test_image_without_mask(small_root: Path) -> None:
    mask = mask_dir(small_root, "train") / "seg_001_slice_0.nii.png"
    mask.unlink()
    with pytest.raises(DataError, match=r"case_001_slice_0.nii.png: image has no mask"):
        load_split(small_root, "train")


def test_unparseable_oasis_name(small_root: Path) -> None:
    shutil.copy(_first_image(small_root), image_dir(small_root, "train") / "brain_7.png")
    with pytest.raises(
        DataError, match=r"brain_7.png: cannot parse the OASIS file name \(expected case_NNN_slice_K.nii.png\)"
    ):
        load_split(small_root, "train")


def test_bad_mask_values(small_root: Path) -> None:
    mask = mask_dir(small_root, "train") / "seg_001_slice_0.nii.png"
    Image.fromarray(np.full((64, 64), 100, dtype=np.uint8)).save(mask)
    with pytest.raises(DataError, match=r"mask has values other than 0/85/170/255"):
        load_split(small_root, "train", with_masks=True)[0]


def test_split_leak_is_detected(small_root: Path) -> None:
    check_no_leak(small_root)
    shutil.copy(_first_image(small_root), image_dir(small_root, "validate") / _first_image(small_root).name)
    problems = find_leaks(small_root)
    assert problems == [f"{small_root}: subject 001 appears in splits train and validate (evaluation leak)"]
    with pytest.raises(DataError, match="evaluation leak"):
        check_no_leak(small_root)


def test_check_data_counts_and_missing_slices(small_root: Path) -> None:
    report = check_data(small_root)
    train = report["splits"]["train"]
    assert train["images"] == 8 and train["subjects"] == 1 and train["image_size"] == [[64, 64]]
    assert train["dtype"] == ["uint8"] and train["masks"] == 8
    assert report["problems"] == []
    victim = image_dir(small_root, "train") / "case_001_slice_3.nii.png"
    victim.unlink()
    (mask_dir(small_root, "train") / "seg_001_slice_3.nii.png").unlink()
    report = check_data(small_root)
    assert report["splits"]["train"]["subjects_missing_slices"] == {"001": [3]}
    assert any("subject 001 is missing slices [3]" in p for p in report["problems"])
