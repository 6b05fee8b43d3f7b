"""The figures people look at: upscaled, near-square, columns of one class named above them."""

from __future__ import annotations

import numpy as np
import torch

from pixelnet.evaluation.figures import (
    LABEL_HEIGHT,
    class_grid,
    classes_in_turn,
    display_scale,
    image_grid,
    near_square_columns,
)


def test_images_are_drawn_at_least_cell_pixels():
    assert (display_scale(28, 28), display_scale(8, 8), display_scale(32, 32), display_scale(64, 64)) == (3, 8, 2, 1)


def test_layouts_are_near_square_and_keep_a_class_per_column():
    assert near_square_columns(256, 10) == 20  # 20 x 13, where one column per class gave 10 x 26
    assert near_square_columns(64, 10) == 10 and near_square_columns(6, 3) == 3
    assert near_square_columns(16) == 4 and near_square_columns(2) == 1


def test_upscaling_is_nearest_neighbour():
    images = np.arange(4, dtype=np.uint8).reshape(1, 1, 2, 2)  # levels 0..3
    grid = np.asarray(image_grid(images, 4, pad=0, scale=3))
    assert grid.shape == (6, 6)
    assert (grid[:3, :3] == 0).all() and (grid[:3, 3:] == 85).all() and (grid[3:, 3:] == 255).all()


def test_class_grid_names_each_column():
    images = np.zeros((20, 1, 8, 8), dtype=np.uint8)  # 20 images of 10 classes taking turns: 10 columns, 2 rows
    grid = np.asarray(class_grid(images, 2, classes=[str(k) for k in range(10)]))
    cell = 8 * display_scale(8, 8) + 2
    assert grid.shape == (LABEL_HEIGHT + 2 + 2 * cell, 2 + 10 * cell)
    band = grid[:LABEL_HEIGHT]
    for col in range(10):  # white text in every column's band, on the gray background
        assert (band[:, 2 + col * cell:(col + 1) * cell] > 200).any()
    plain = np.asarray(class_grid(images, 2, classes=None))
    assert plain.shape == (2 + 5 * cell, 2 + 4 * cell)  # no classes: near-square, 4 across and 5 down, no band


def test_the_real_half_takes_the_classes_in_turn_like_the_samples():
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([2, 5, 4]))  # a split stored in class order
    picked = classes_in_turn(labels, 9, 3, seed=1)
    assert labels[picked].tolist() == [0, 1, 2, 0, 1, 2, 1, 2, 1]  # class 0 runs out after two
    assert len(set(picked.tolist())) == 9
