import numpy as np
import pytest
from PIL import Image

from featx import Crop, ImageError
from featx.data.images import load_resized, load_rgb, read_size, target_size

from conftest import make_image


@pytest.mark.parametrize("hw,q,want", [
    ((375, 500), 256, (256, 341)),   # VOC landscape: 500*256/375 = 341.33
    ((500, 375), 256, (341, 256)),   # portrait
    ((375, 500), 768, (768, 1024)),  # upsampling
    ((100, 150), 256, (256, 384)),   # image smaller than Q
    ((300, 300), 224, (224, 224)),
])
def test_target_size(hw, q, want):
    assert target_size(hw, q) == want


def test_target_size_matches_torchvision_resize():
    from torchvision.transforms import functional as F
    for h, w in [(375, 500), (333, 500), (500, 281), (481, 640), (224, 225)]:
        for q in (224, 256, 384, 512, 640, 768):
            img = Image.new("RGB", (w, h))
            assert F.resize(img, q).size[::-1] == target_size((h, w), q)


def test_resize_is_pil_bilinear(tmp_path):
    p = make_image(tmp_path / "a.png", (300, 225))
    got = load_resized(p, 256)
    want = np.asarray(Image.open(p).convert("RGB").resize((341, 256), Image.BILINEAR))
    assert got.shape == (256, 341, 3) and np.array_equal(got, want)


def test_modes_become_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (240, 300, 3), dtype=np.uint8)
    gray = Image.fromarray(rgb).convert("L")
    gray.save(tmp_path / "g.png")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "g.png"))[..., 0], np.asarray(gray))
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    assert load_rgb(tmp_path / "p.png").mode == "RGB"
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    assert load_rgb(tmp_path / "c.jpg").mode == "RGB"
    # alpha: a fully transparent pixel becomes white, an opaque one keeps its colour
    rgba = np.dstack([rgb, np.zeros((240, 300), np.uint8)])
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_rgb(tmp_path / "a.png"))
    assert tuple(out[0, 0]) == tuple(rgb[0, 0]) and tuple(out[5, 5]) == (255, 255, 255)
    # 16-bit grayscale: 65535 -> 255, 257*100 -> 100
    a16 = np.full((240, 300), 257 * 100, np.uint16)
    a16[0, 0] = 65535
    Image.fromarray(a16).save(tmp_path / "16.png")
    out = np.asarray(load_rgb(tmp_path / "16.png"))
    assert out[0, 0, 0] == 255 and out[1, 1, 2] == 100


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((240, 320, 3), np.uint8)
    a[:10, :10] = 255  # a white corner, top-left as stored
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    assert read_size(tmp_path / "r.jpg") == (320, 240)  # (h, w) of the upright image
    up = np.asarray(load_rgb(tmp_path / "r.jpg"))
    assert up.shape == (320, 240, 3)
    assert up[:10, -10:].mean() > 200 and up[:10, :10].mean() < 50  # corner moved top-right


@pytest.mark.parametrize("kind,reason", [
    ("missing", "file not found"),
    ("empty", r"empty file \(0 bytes\)"),
    ("text", "not an image"),
    ("truncated", "truncated or corrupt"),
    ("bomb", r"300x240 = 72,000 pixels exceeds the 10,000 pixel limit \(decompression-bomb guard"),
])
def test_bad_files_name_file_and_reason(tmp_path, monkeypatch, kind, reason):
    p = tmp_path / f"{kind}.jpg"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("hello, I am not a JPEG")
    elif kind == "truncated":
        make_image(p, (300, 240), fmt="JPEG")
        p.write_bytes(p.read_bytes()[:800])
    elif kind == "bomb":
        make_image(p, (300, 240), fmt="JPEG")
        monkeypatch.setenv("FEATX_MAX_PIXELS", "10000")
    with pytest.raises(ImageError, match=f"{p}: {reason}"):
        load_resized(p, 256)


def test_crop_region(tmp_path):
    p = make_image(tmp_path / "a.png", (300, 240))
    crop = Crop(str(p), (10, 20, 110, 70))
    assert read_size(crop) == (50, 100)
    assert np.array_equal(np.asarray(load_rgb(crop)), np.asarray(Image.open(p))[20:70, 10:110])
    with pytest.raises(ImageError, match=r"box \(0, 0, 400, 10\) lies outside the 300x240 image"):
        read_size(Crop(str(p), (0, 0, 400, 10)))


def test_encoded_bytes_read_like_the_file(tmp_path):
    path = make_image(tmp_path / "a.png", (300, 240), seed=3)
    data = path.read_bytes()
    assert read_size(data) == read_size(path) == (240, 300)
    np.testing.assert_array_equal(load_resized(data, 224), load_resized(path, 224))
    with pytest.raises(ImageError, match=r"image #4: not an image \(unrecognised format\)"):
        read_size(b"junk", 4)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_rgb(data[:2000], 0)
