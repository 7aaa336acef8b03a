from __future__ import annotations

import torch
from PIL import Image

from wrf4cir.data import Query
from wrf4cir.data.transforms import TargetPad, image_transform
from wrf4cir.trainer import TripletData


def test_target_pad_pads_only_long_images_to_a_centred_square():
    pad = TargetPad(1.25)
    square_ish = Image.new("RGB", (100, 90), "red")
    assert pad(square_ish) is square_ish  # ratio 1.11: unchanged
    tall = Image.new("RGB", (40, 100), "red")
    out = pad(tall)
    assert out.size == (100, 100)
    assert out.getpixel((50, 50)) == (255, 0, 0)  # the image, centred
    assert out.getpixel((5, 50)) == (0, 0, 0) and out.getpixel((95, 50)) == (0, 0, 0)


def test_image_transform_composes_the_pad_before_the_model_transform():
    seen = []
    base = lambda im: seen.append(im.size) or torch.zeros(1)  # noqa: E731
    image_transform(base, "target_pad", 1.25)(Image.new("RGB", (30, 90)))
    image_transform(base, "clip")(Image.new("RGB", (30, 90)))
    assert seen == [(90, 90), (30, 90)]


class ThreeForms:
    name, split, protocol = "toy", "train", "fashioniq"
    queries = [Query("a", "b", "A and b"), Query("c", "d", "C and d")]
    gallery = ["a", "b", "c", "d"]

    def text_choices(self, i):
        return (f"form1-{i}", f"form2-{i}", f"form3-{i}", f"form4-{i}")

    def image(self, name):
        return Image.new("RGB", (4, 4))


def test_training_texts_are_drawn_per_epoch_and_reproducibly():
    data = TripletData(ThreeForms(), lambda im: torch.zeros(1), seed=3)

    def texts(epoch):
        data.set_epoch(epoch)
        return [data[i][1] for i in range(2)]

    draws = [tuple(texts(e)) for e in range(12)]
    assert draws == [tuple(texts(e)) for e in range(12)]  # the same on every run
    assert len(set(draws)) > 1  # and not the same every epoch
    assert all(t.startswith("form") for d in draws for t in d)
