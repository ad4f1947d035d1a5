"""Prompts: parsing from command-line text, validation against an image's shape, and generation from masks."""

import numpy as np
import pytest

from oncoseg.errors import PromptError
from oncoseg.prompts import (
    Box,
    ObjectPrompts,
    Point,
    Prompt,
    box_from_mask,
    build_object,
    build_prompts,
    parse_box,
    parse_point,
    points_from_mask,
    validate_prompt,
)

# -- parsing -------------------------------------------------------------------------------------------------


def test_parse_box_without_and_with_slice():
    assert parse_box("10,20,30.5,40") == Box(10, 20, 30.5, 40, z=None)
    assert parse_box(" 1, 2 ,3,4,7") == Box(1, 2, 3, 4, z=7)
    assert parse_box("1,2,3,4,7.0").z == 7


def test_parse_point_without_and_with_slice_and_polarity():
    assert parse_point("5,6") == Point(5, 6, positive=True, z=None)
    assert parse_point("5,6,9") == Point(5, 6, positive=True, z=9)
    assert parse_point("5,6:neg") == Point(5, 6, positive=False, z=None)
    assert parse_point("5,6,2:neg") == Point(5, 6, positive=False, z=2)
    assert parse_point("5,6:pos").positive


@pytest.mark.parametrize(
    "text", ["1,2,3", "1,2,3,4,5,6", "a,b,c,d", "", "1,2,,4", "1,2,3,4,2.5", "1,2,3,4,nan", "1,2,3,4,inf"]
)
def test_parse_box_rejects_bad_text_naming_it(text):
    with pytest.raises(PromptError) as info:
        parse_box(text)
    assert repr(text) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["1", "1,2,3,4", "x,y", "1,2:maybe", "1,2:NEG", "1,2,0.5", "1,2:neg:pos"])
def test_parse_point_rejects_bad_text_naming_it(text):
    with pytest.raises(PromptError) as info:
        parse_point(text)
    assert repr(text) in str(info.value)


# -- validation ----------------------------------------------------------------------------------------------


def test_valid_prompts_pass():
    validate_prompt(Prompt(Box(0, 0, 59, 49)), (50, 60))  # inclusive corners on the last pixel
    validate_prompt(Prompt(points=(Point(59, 49),)), (50, 60))
    validate_prompt(Prompt(Box(1, 1, 9, 9), (Point(3, 3, positive=False),)), (50, 60))
    validate_prompt(Prompt(Box(1, 1, 9, 9, z=0)), (50, 60))  # slice 0 of a 2D image is the image
    validate_prompt(Prompt(Box(1, 1, 9, 9, z=29)), (30, 50, 60))


@pytest.mark.parametrize(
    "prompt, shape, words",
    [
        (Prompt(Box(0, 0, 60, 49)), (50, 60), "outside the image"),
        (Prompt(Box(-1, 0, 10, 10)), (50, 60), "outside the image"),
        (Prompt(points=(Point(3, 50),)), (50, 60), "outside the image"),
        (Prompt(Box(5, 5, 5, 10)), (50, 60), "zero area"),
        (Prompt(Box(8, 5, 4, 10)), (50, 60), "zero area"),
        (Prompt(Box(float("nan"), 5, 4, 10)), (50, 60), "finite"),
        (Prompt(Box(1, 1, 9, 9, z=30)), (30, 50, 60), "slice 30 is outside the volume (slices 0..29)"),
        (Prompt(Box(1, 1, 9, 9, z=-1)), (30, 50, 60), "outside the volume"),
        (Prompt(Box(1, 1, 9, 9)), (30, 50, 60), "give the slice index Z"),
        (Prompt(Box(1, 1, 9, 9, z=3)), (50, 60), "2D image"),
        (Prompt(points=(Point(3, 3, positive=False),)), (50, 60), "only negative points"),
        (Prompt(), (50, 60), "no prompt"),
        (Prompt(Box(1, 1, 9, 9, z=2), (Point(3, 3, z=4),)), (30, 50, 60), "different slices"),
    ],
)
def test_invalid_prompts_raise_one_clear_line(prompt, shape, words):
    with pytest.raises(PromptError, match="^[^\n]+$") as info:
        validate_prompt(prompt, shape)
    assert words in str(info.value)


def test_prompt_slice_comes_from_its_parts_and_on_slice_moves_them():
    prompt = Prompt(Box(1, 1, 9, 9), (Point(3, 3, z=5),))
    assert prompt.z == 5
    moved = prompt.on_slice(8)
    assert moved.z == 8 and moved.box.z == 8 and moved.points[0].z == 8
    assert Prompt(Box(1, 1, 9, 9)).z is None


def test_build_prompts_groups_boxes_and_points():
    one = build_prompts(["1,2,30,40"], ["5,6", (7, 8)])
    assert one == [Prompt(Box(1, 2, 30, 40), (Point(5, 6), Point(7, 8)))]
    two = build_prompts(["1,2,30,40,3", (5, 6, 50, 60, 3)])
    assert [p.box for p in two] == [Box(1, 2, 30, 40, 3), Box(5, 6, 50, 60, 3)]
    assert build_prompts(points=["5,6:neg", "9,9"]) == [Prompt(points=(Point(5, 6, False), Point(9, 9)))]
    with pytest.raises(PromptError, match="at most one box"):
        build_prompts(["1,2,30,40", "5,6,50,60"], ["5,6"])
    with pytest.raises(PromptError, match="no prompt"):
        build_prompts()


def test_build_object_gives_one_prompt_per_slice_first_box_first():
    obj = build_object(["1,2,30,40,7", "3,4,20,30,2"], ["5,6,2:neg", "9,9,4", "8,8,7"], name="liver")
    assert obj == ObjectPrompts(
        (
            Prompt(Box(1, 2, 30, 40, 7), (Point(8, 8, True, 7),)),
            Prompt(Box(3, 4, 20, 30, 2), (Point(5, 6, False, 2),)),
            Prompt(points=(Point(9, 9, True, 4),)),
        ),
        "liver",
    )
    assert [p.z for p in obj.prompts] == [7, 2, 4]
    assert build_object(points=["5,6"]).prompts == (Prompt(points=(Point(5, 6),)),)  # 2D: one "slice"


def test_build_object_refuses_two_boxes_on_a_slice_and_no_prompt():
    with pytest.raises(PromptError, match="two boxes for one object on slice 3"):
        build_object(["1,2,30,40,3", "5,6,50,60,3"])
    with pytest.raises(PromptError, match="two boxes for one object on the image"):
        build_object(["1,2,30,40", "5,6,50,60"])
    with pytest.raises(PromptError, match="no prompt given for object 'gtv'"):
        build_object(name="gtv")


def test_a_correction_may_be_exclude_clicks_alone():
    negative = Prompt(points=(Point(5, 5, False, 1),))
    with pytest.raises(PromptError, match="only negative points"):
        validate_prompt(negative, (3, 20, 20))
    validate_prompt(negative, (3, 20, 20), correction=True)
    with pytest.raises(PromptError, match="outside the image"):  # the other rules still hold
        validate_prompt(Prompt(points=(Point(50, 5, False, 1),)), (3, 20, 20), correction=True)


# -- prompts from masks --------------------------------------------------------------------------------------


def test_box_from_mask_is_the_tight_inclusive_box():
    mask = np.zeros((40, 50), bool)
    mask[3:8, 10:21] = True
    mask[20, 30] = True
    assert box_from_mask(mask, z=4) == Box(10, 3, 30, 20, z=4)


def test_box_from_single_pixel_has_area_and_stays_inside():
    mask = np.zeros((10, 12), bool)
    mask[4, 5] = True
    assert box_from_mask(mask) == Box(5, 4, 6, 5)
    mask[:] = False
    mask[9, 11] = True  # bottom-right corner: the box grows inwards
    assert box_from_mask(mask) == Box(10, 8, 11, 9)


def test_box_from_mask_jitter_is_seeded_and_stays_inside_the_image():
    mask = np.zeros((30, 40), bool)
    mask[0:12, 25:40] = True  # touches the top and right edges
    boxes = [box_from_mask(mask, jitter=0.5, rng=np.random.default_rng(seed)) for seed in range(200)]
    assert box_from_mask(mask, jitter=0.5, rng=np.random.default_rng(7)) == boxes[7]
    assert len(set(boxes)) > 100  # the jitter really moves the box
    for box in boxes:
        assert 0 <= box.x0 < box.x1 <= 39 and 0 <= box.y0 < box.y1 <= 29
        validate_prompt(Prompt(box), mask.shape)


def test_box_from_empty_mask_raises():
    with pytest.raises(PromptError, match="empty mask"):
        box_from_mask(np.zeros((5, 5), bool))


def test_first_point_is_the_most_interior_pixel():
    # A disk of radius 6 centred at (x=12, y=20) with a long thin tail to the right: the centroid and the
    # bounding-box centre lie off the disk centre, the most interior pixel does not.
    yy, xx = np.mgrid[0:40, 0:80]
    mask = (xx - 12) ** 2 + (yy - 20) ** 2 <= 36
    mask[19:22, 12:78] = True
    first = points_from_mask(mask, z=3)
    assert first == (Point(12.0, 20.0, True, 3),)


def test_most_interior_pixel_treats_the_image_edge_as_border():
    assert points_from_mask(np.ones((5, 5), bool)) == (Point(2.0, 2.0),)
    edge = np.zeros((9, 9), bool)
    edge[0:5, 2:7] = True  # a square on the top edge: its most interior pixel is its centre, not lower
    assert points_from_mask(edge) == (Point(4.0, 2.0),)


def test_all_points_lie_inside_the_mask_and_are_seeded():
    mask = np.zeros((30, 30), bool)
    mask[5:9, 3:25] = True
    mask[5:28, 20:25] = True
    points = points_from_mask(mask, n=15, rng=np.random.default_rng(1))
    assert len(points) == 15 and all(p.positive for p in points)
    assert all(mask[int(p.y), int(p.x)] for p in points)
    assert points == points_from_mask(mask, n=15, rng=np.random.default_rng(1))
    tiny = np.zeros((5, 5), bool)
    tiny[2, 1:4] = True
    assert len(points_from_mask(tiny, n=10, rng=np.random.default_rng(0))) == 4  # first + all 3 pixels


def test_points_from_empty_mask_raise():
    with pytest.raises(PromptError, match="empty mask"):
        points_from_mask(np.zeros((5, 5), bool))


def test_box_enlarged_grows_by_fraction_or_minimum_and_clips():
    box = Box(20, 10, 39, 29, z=2)  # 20 x 20 px
    assert box.enlarged(0.1, 1.0, (100, 100)) == Box(18, 8, 41, 31, z=2)
    assert box.enlarged(0.01, 3.0, (100, 100)) == Box(17, 7, 42, 32, z=2)
    assert box.enlarged(0.5, 1.0, (35, 45)) == Box(10, 0, 44, 34, z=2)
    assert Box(0, 0, 4, 4).enlarged(1.0, 1.0, (5, 5)) == Box(0, 0, 4, 4)


def test_more_objects_than_labels_is_one_clear_error():
    from oncoseg.prompts import MAX_OBJECTS, build_prompts

    boxes = [(i, 0, i + 2, 2) for i in range(MAX_OBJECTS + 1)]
    with pytest.raises(PromptError, match="at most 255 objects"):
        build_prompts(boxes)
    assert len(build_prompts(boxes[:MAX_OBJECTS])) == MAX_OBJECTS
