"""Scenes: an offline multi-object dataset of grey canvases with boxes, labels and captions.

    scenes = Scenes("train", source="digits", num_examples=1000)     # or source="fashion_mnist"
    s = scenes[7]            # a Scene, a pure function of (seed, split, 7)
    s.image                  # float32 [H, W, 1] in [0, 1]
    s.bbox, s.boxes          # int32 [n, 4] COCO [x, y, w, h] px; float32 [n, 4] cxcywh in [0, 1]
    s.labels, s.captions     # int32 [n]; 2-5 paraphrases, s.captions[0] the canonical one
    ds = detection_dataset(scenes, global_batch_size=32, train=True)   # the shared batcher
    ds[0]    # {'image' [b, H, W, 1], 'boxes' [b, m, 4] cxcywh, 'labels' [b, m],
             #  'box_mask' bool [b, m], 'mask' [b]}  (m = max_items)
    write_coco_json("validation", "val.json", source="digits")       # COCO detection JSON
    caption_counts("a bag to the left of two shirts", "fashion_mnist")  # {8: 1, 6: 2}
    caption_metrics(predictions, scenes_list, "digits")  # {'class_set_match', 'class_count_match'}

Sources. 'fashion_mnist': the 28x28 Fashion-MNIST items from the IDX files
(`fashion_mnist.read_fashion_mnist`), default canvas 64x64, items resized to 16..28 px.
'digits': scikit-learn's 8x8 digits (no file needed; the fast test variant), default canvas
32x32, items resized to 10..14 px.

Splits are disjoint by construction: each draws its items from its own pool of source items.
Fashion-MNIST: train = items 0..53999 of the IDX train file, validation = its items
54000..59999, test = the IDX test file. Digits: test = `digits_test_mask` (every 5th of each
class), validation = every 10th of each class's remaining items (ranks 9, 19, ...), train =
the rest. `Scene.source_items` names the items by their id in the source's item table
(Fashion-MNIST: train file index, or 60000 + test file index; digits: `load_digits` index).

Generation. Example i of a split is drawn from `np.random.default_rng((seed, split_id, i))`
(split_id: train 0, validation 1, test 2): random access, and a resumed run sees the same
examples. It has n ~ U{min_items..max_items} distinct items of the pool; each is resized
(PIL bilinear) to a random square side in `item_size`, pixels below INK_THRESHOLD/255 are set to
0, and the item is cropped to its ink. Items do NOT overlap: every box keeps at least GAP empty
pixels from every other box, so a box encloses exactly the non-zero pixels of its item.
Placement is uniform over the free positions (an exact window-sum search), largest item first;
a scene that jams is redrawn up to PLACEMENT_TRIES times, then its items go into random cells
of a grid (which the canvas is checked to hold at construction). Objects are listed left to
right (by x, then y).

Boxes. `bbox` is COCO's [x, y, w, h] in pixels (x, y: top-left; x + w, y + h: exclusive end);
`boxes` is DETR's normalised [cx, cy, w, h] = [(x + w/2) / W, (y + h/2) / H, w / W, h / H].

Captions (decoded as bytes by the sequence task's tokenizer; vocabulary: the class nouns,
a/an, two..nine, and, there, is, are, to, the, left, right, of, above, below):

    caption  := list | "there" ("is" | "are") list | phrase relation phrase
    list     := phrase ("and" phrase)*          one phrase per class present, all classes
    phrase   := ("a" | "an") noun | count plural        (count: the number of items of the class)
    relation := "to the left of" | "to the right of" | "above" | "below"

A caption names every class present with its count. Relation captions are made only when
exactly two classes are present: "A to the left of B" holds when every box of A ends at or
before every box of B starts, max_A(x + w) <= min_B(x); "A above B" when max_A(y + h) <=
min_B(y) ("to the right of" and "below" are the inverses). Each relation that holds is stated
both ways ("a sneaker to the left of a bag", "a bag to the right of a sneaker"), the one with
the widest gap first (horizontal on ties). Then the lists: groups ordered by their leftmost box,
by their topmost box, by class id; and "there is/are" + the left-to-right list ("is" when the
first phrase is singular). Duplicates are dropped and at most MAX_REFERENCES kept: a single
class gives 2 ("two shirts", "there are two shirts"), several give 3-5. captions[0] is the
canonical reference (a relation when one holds, else the left-to-right list).
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import functools
import itertools
import json
import os
import pathlib
from typing import Any

import grain
import numpy as np
from PIL import Image

from attn_jax.data import batcher
from attn_jax.data.datasets import fashion_mnist
from attn_jax.data.datasets.digits import digits_test_mask

SPLITS = {"train": 0, "validation": 1, "test": 2}  # split -> the split_id of the example seed
DEFAULT_NUM_EXAMPLES = {"train": 50_000, "validation": 1000, "test": 1000}
GAP = 1                 # empty pixels kept between any two boxes
INK_THRESHOLD = 26      # resized pixels below this (of 255, ~0.1) are set to 0
PLACEMENT_TRIES = 20    # random placements tried before the grid fallback
MAX_REFERENCES = 5
COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
               9: "nine"}
RELATIONS = (("to the left of", "to the right of"), ("above", "below"))  # per axis x, y


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """A source of items: its class nouns and the default canvas and item sizes."""

    singular: tuple[str, ...]
    plural: tuple[str, ...]
    articles: tuple[str, ...]    # 'a' or 'an', by sound: "an eight", "a one"
    canvas_size: int
    item_size: tuple[int, int]   # (min, max) side of the resized square item, pixels

    def phrase(self, label: int, count: int) -> str:
        """'a bag', 'an eight', 'two shirts'."""
        if count == 1:
            return f"{self.articles[label]} {self.singular[label]}"
        return f"{COUNT_WORDS[count]} {self.plural[label]}"


SOURCES = {
    "fashion_mnist": SourceSpec(
        singular=("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                  "bag", "boot"),
        plural=("t-shirts", "trousers", "pullovers", "dresses", "coats", "sandals", "shirts",
                "sneakers", "bags", "boots"),
        articles=("a",) * 10,
        canvas_size=64, item_size=(16, 28)),
    "digits": SourceSpec(
        singular=("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
        plural=("zeros", "ones", "twos", "threes", "fours", "fives", "sixes", "sevens", "eights",
                "nines"),
        articles=("a",) * 8 + ("an", "a"),
        canvas_size=32, item_size=(10, 14)),
}


@dataclasses.dataclass(frozen=True)
class Scene:
    """One example. n objects, listed left to right (by x, then y).

    image: float32 [H, W, 1] in [0, 1]; bbox: int32 [n, 4] COCO [x, y, w, h] pixels;
    boxes: float32 [n, 4] normalised [cx, cy, w, h]; labels: int32 [n]; class_names: n nouns;
    captions: 2..MAX_REFERENCES strings, [0] canonical; source_items: int64 [n] item ids (see
    the module docstring); index: the example's index in its split.
    """

    image: np.ndarray
    bbox: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    captions: tuple[str, ...]
    source_items: np.ndarray
    index: int


# ----------------------------------------------------------------------------------- source items
@functools.lru_cache(maxsize=4)
def _source_items(source: str, source_dir: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images uint8 [N, s, s], labels int32 [N], split -> pool of item ids) of a source."""
    if source == "fashion_mnist":
        train_images, train_labels = fashion_mnist.read_fashion_mnist(source_dir, "train")
        test_images, test_labels = fashion_mnist.read_fashion_mnist(source_dir, "test")
        images = np.concatenate([train_images, test_images])[..., 0]
        labels = np.concatenate([train_labels, test_labels]).astype(np.int32)
        n_train, n_val = len(train_labels), len(train_labels) // 10
        pools = {"train": np.arange(n_train - n_val),
                 "validation": np.arange(n_train - n_val, n_train),
                 "test": np.arange(n_train, len(labels))}
    else:
        from sklearn.datasets import load_digits  # pylint: disable=import-outside-toplevel

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)
        labels = digits.target.astype(np.int32)
        test = digits_test_mask(labels)
        validation = np.zeros(len(labels), bool)
        for c in range(10):
            validation[np.flatnonzero((labels == c) & ~test)[9::10]] = True
        pools = {"train": np.flatnonzero(~test & ~validation),
                 "validation": np.flatnonzero(validation), "test": np.flatnonzero(test)}
    images.flags.writeable = labels.flags.writeable = False
    for pool in pools.values():
        pool.flags.writeable = False
    return images, labels, pools


def _item_patch(image: np.ndarray, side: int) -> np.ndarray:
    """uint8 [s, s] -> the item resized to [side, side] (PIL bilinear), faint pixels zeroed,
    cropped to its ink: uint8 [h, w] whose first and last rows and columns have ink (empty
    [0, 0] if nothing is left)."""
    resized = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))
    resized = np.where(resized >= INK_THRESHOLD, resized, 0).astype(np.uint8)
    rows, cols = np.flatnonzero(resized.any(1)), np.flatnonzero(resized.any(0))
    if not len(rows):
        return resized[:0, :0]
    return resized[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


# -------------------------------------------------------------------------------------- placement
def _grid_shape(canvas_hw: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Rows and columns of cells of side max_side, GAP apart, that fit on the canvas."""
    return tuple((d + GAP) // (max_side + GAP) for d in canvas_hw)


def _free_positions(occupied: np.ndarray, h: int, w: int) -> np.ndarray:
    """Flat indices r * (W - w + 1) + c of the top-left corners where an [h, w] window holds no
    occupied pixel (window sums of an integral image)."""
    H, W = occupied.shape
    if h > H or w > W:
        return np.zeros(0, np.int64)
    integral = np.zeros((H + 1, W + 1), np.int32)
    integral[1:, 1:] = occupied.cumsum(0).cumsum(1)
    sums = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    return np.flatnonzero(sums == 0)


def _place(rng: np.random.Generator, shapes: list[tuple[int, int]], canvas_hw: tuple[int, int],
           max_side: int) -> list[tuple[int, int]]:
    """Top-left (y, x) of each [h, w] patch, boxes GAP apart and inside the canvas."""
    H, W = canvas_hw
    order = sorted(range(len(shapes)), key=lambda i: -shapes[i][0] * shapes[i][1])
    for _ in range(PLACEMENT_TRIES):
        occupied = np.zeros((H, W), bool)
        corners: dict[int, tuple[int, int]] = {}
        for i in order:
            h, w = shapes[i]
            free = _free_positions(occupied, h, w)
            if not len(free):
                break
            y, x = divmod(int(free[rng.integers(len(free))]), W - w + 1)
            corners[i] = (y, x)
            occupied[max(y - GAP, 0):y + h + GAP, max(x - GAP, 0):x + w + GAP] = True
        else:
            return [corners[i] for i in range(len(shapes))]
    # Jammed every time: random cells of the grid that the constructor checked the canvas holds.
    rows, cols = _grid_shape(canvas_hw, max_side)
    cells = rng.permutation(rows * cols)[:len(shapes)]
    corners_list = []
    for (h, w), cell in zip(shapes, cells):
        r, c = divmod(int(cell), cols)
        corners_list.append((r * (max_side + GAP) + int(rng.integers(max_side - h + 1)),
                             c * (max_side + GAP) + int(rng.integers(max_side - w + 1))))
    return corners_list


# --------------------------------------------------------------------------------------- captions
def _groups(labels: np.ndarray, bbox: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """(label, count, boxes [k, 4]) per class present, ordered by leftmost box (then topmost,
    then label)."""
    groups = [(int(c), int((labels == c).sum()), bbox[labels == c]) for c in np.unique(labels)]
    return sorted(groups, key=lambda g: (g[2][:, 0].min(), g[2][:, 1].min(), g[0]))


def _captions(labels: np.ndarray, bbox: np.ndarray, spec: SourceSpec) -> tuple[str, ...]:
    """The references of a scene, by the grammar of the module docstring."""
    groups = _groups(labels, bbox)
    phrase = {g[0]: spec.phrase(g[0], g[1]) for g in groups}
    refs = []
    if len(groups) == 2:
        stated = []
        for axis, (forward, inverse) in enumerate(RELATIONS):
            for (a, _, a_boxes), (b, _, b_boxes) in itertools.permutations(groups):
                gap = b_boxes[:, axis].min() - (a_boxes[:, axis] + a_boxes[:, axis + 2]).max()
                if gap >= 0:  # every box of a ends at or before every box of b starts
                    stated.append((-gap, axis, a, b, forward, inverse))
        for _, _, a, b, forward, inverse in sorted(stated):
            refs += [f"{phrase[a]} {forward} {phrase[b]}", f"{phrase[b]} {inverse} {phrase[a]}"]
    orders = (groups, sorted(groups, key=lambda g: (g[2][:, 1].min(), g[2][:, 0].min(), g[0])),
              sorted(groups, key=lambda g: g[0]))
    refs += [" and ".join(phrase[g[0]] for g in order) for order in orders]
    refs.append(f"there {'is' if groups[0][1] == 1 else 'are'} "
                + " and ".join(phrase[g[0]] for g in groups))
    return tuple(dict.fromkeys(refs))[:MAX_REFERENCES]


def caption_counts(caption: str, source: str) -> dict[int, int]:
    """The classes a caption names, with their counts, read off the grammar's phrases:
    {label: count} for every '"a" | "an" noun' (count 1) and 'count plural' in it ("a bag to
    the left of two shirts" -> {8: 1, 6: 2} with Fashion-MNIST). Words outside a phrase are
    skipped, so a malformed (predicted) caption still gives the classes it names; a class named
    twice keeps its largest count. Articles are not checked ("a eight" names an eight)."""
    spec = _spec(source)
    numbers = {"a": 1, "an": 1} | {w: n for n, w in COUNT_WORDS.items()}
    words, out, i = caption.split(), {}, 0
    while i < len(words) - 1:
        count, noun = numbers.get(words[i]), words[i + 1]
        nouns = spec.singular if count == 1 else spec.plural
        if count is not None and noun in nouns:
            label = nouns.index(noun)
            out[label] = max(out.get(label, 0), count)
            i += 2
        else:
            i += 1
    return out


def caption_metrics(predictions: collections.abc.Sequence[str],
                    scenes: collections.abc.Sequence[Scene], source: str) -> dict[str, float]:
    """What a caption gets right about its scene, beyond matching a reference:
    'class_set_match' (the fraction of predictions whose named classes, `caption_counts`, are
    exactly the classes in the scene) and 'class_count_match' (classes and their counts)."""
    if len(predictions) != len(scenes) or not scenes:
        raise ValueError(f"need one prediction per scene, at least one: got {len(predictions)} "
                         f"predictions for {len(scenes)} scenes")
    sets = counts = 0
    for caption, scene in zip(predictions, scenes):
        named = caption_counts(caption, source)
        truth = collections.Counter(scene.labels.tolist())
        sets += set(named) == set(truth)
        counts += named == dict(truth)
    return {"class_set_match": sets / len(scenes), "class_count_match": counts / len(scenes)}


def longest_caption(source: str, max_items: int) -> int:
    """The most UTF-8 bytes any caption of the grammar takes with up to max_items items
    (the longest list with 'there are', or the longest relation, over every multiset of
    classes): what a byte tokenizer's target length must hold, plus its eos."""
    spec = _spec(source)
    _check_items(1, max_items)
    longest = 0
    for k in range(1, max_items + 1):
        for combo in itertools.combinations_with_replacement(range(len(spec.singular)), k):
            counts = collections.Counter(combo)
            phrases = [spec.phrase(c, n) for c, n in counts.items()]
            longest = max(longest, len(("there are " + " and ".join(phrases)).encode()))
            if len(phrases) == 2:
                longest = max(longest, len(f"{phrases[0]} to the right of {phrases[1]}".encode()))
    return longest


# ------------------------------------------------------------------------------------ the dataset
def _spec(source: str) -> SourceSpec:
    if source not in SOURCES:
        raise ValueError(f"unknown scene source {source!r}: choose one of {tuple(SOURCES)}")
    return SOURCES[source]


def _check_items(min_items: int, max_items: int) -> None:
    if min_items < 1 or max_items < min_items:
        raise ValueError(f"min_items={min_items}, max_items={max_items}: a scene needs at least "
                         "one item (1 <= min_items <= max_items); an empty canvas has no caption")
    if max_items > max(COUNT_WORDS):
        raise ValueError(f"max_items={max_items}: the captions count up to {max(COUNT_WORDS)} "
                         f"({COUNT_WORDS[max(COUNT_WORDS)]})")


class Scenes(collections.abc.Sequence):
    """The examples of one split: a random-access sequence of `Scene`s (see the module docstring).

    split: 'train', 'validation' or 'test'; source: 'fashion_mnist' or 'digits';
    num_examples: length of the split (default DEFAULT_NUM_EXAMPLES[split]); canvas_size: side
    or (height, width) in pixels (default: the source's); item_size: (min, max) side of the
    resized items (default: the source's); source_dir: the Fashion-MNIST IDX directory
    (default $FASHION_MNIST_DIR, else /usr/share/datasets/fashion-mnist).
    Raises ValueError for an unknown split or source, fewer than one item, or a canvas too small
    for max_items items of the largest size; FileNotFoundError (from `read_idx`, naming the path)
    for a missing Fashion-MNIST file. The source items are read here, once per process.
    """

    def __init__(self, split: str, *, source: str = "fashion_mnist",
                 num_examples: int | None = None, canvas_size: int | tuple[int, int] | None = None,
                 min_items: int = 1, max_items: int = 4, item_size: tuple[int, int] | None = None,
                 seed: int = 0, source_dir: str | os.PathLike | None = None):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: choose one of {tuple(SPLITS)}")
        self.spec = _spec(source)
        _check_items(min_items, max_items)
        canvas_size = canvas_size or self.spec.canvas_size
        self.canvas_hw = ((canvas_size, canvas_size) if isinstance(canvas_size, int)
                          else tuple(int(d) for d in canvas_size))
        self.item_size = tuple(int(s) for s in (item_size or self.spec.item_size))
        if len(self.item_size) != 2 or not 1 <= self.item_size[0] <= self.item_size[1]:
            raise ValueError(f"item_size={self.item_size} must be (min, max) with 1 <= min <= max")
        grid = _grid_shape(self.canvas_hw, self.item_size[1])
        if grid[0] * grid[1] < max_items:
            raise ValueError(
                f"canvas {self.canvas_hw[0]}x{self.canvas_hw[1]} is too small for max_items="
                f"{max_items} items of up to {self.item_size[1]}x{self.item_size[1]} px kept "
                f"{GAP} px apart: a grid of {grid[0]}x{grid[1]} such cells fits; enlarge the "
                f"canvas or lower max_items or item_size")
        self.num_examples = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else num_examples
        if self.num_examples < 0:
            raise ValueError(f"num_examples={self.num_examples} must be >= 0")
        self.split, self.source, self.seed = split, source, int(seed)
        self.min_items, self.max_items = min_items, max_items
        source_dir = (source_dir or os.environ.get(fashion_mnist.FASHION_MNIST_DIR_ENV)
                      or fashion_mnist.DEFAULT_FASHION_MNIST_DIR)
        self._images, self._labels, pools = _source_items(source, os.fspath(source_dir))
        self.item_pool = pools[split]
        if len(self.item_pool) < max_items:
            raise ValueError(f"the {split} pool of {source} has {len(self.item_pool)} items, "
                             f"fewer than max_items={max_items}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (*self.canvas_hw, 1)

    @property
    def num_classes(self) -> int:
        return len(self.spec.singular)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The category names, by label (the caption nouns)."""
        return self.spec.singular

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> Scene:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for the {len(self)} {self.split} scenes")
        rng = np.random.default_rng((self.seed, SPLITS[self.split], index))
        n = int(rng.integers(self.min_items, self.max_items + 1))
        items, patches = [], []
        while len(patches) < n:  # distinct items; one left inkless by the resize is redrawn
            item = int(self.item_pool[rng.integers(len(self.item_pool))])
            if item in items:
                continue
            patch = _item_patch(self._images[item], int(rng.integers(self.item_size[0],
                                                                     self.item_size[1] + 1)))
            if patch.size:
                items.append(item)
                patches.append(patch)
        corners = _place(rng, [p.shape for p in patches], self.canvas_hw, self.item_size[1])
        bbox = np.array([(x, y, p.shape[1], p.shape[0]) for p, (y, x) in zip(patches, corners)],
                        np.int32)
        order = np.lexsort((bbox[:, 1], bbox[:, 0]))  # left to right, then top to bottom
        canvas = np.zeros(self.canvas_hw, np.uint8)
        for p, (y, x) in zip(patches, corners):
            canvas[y:y + p.shape[0], x:x + p.shape[1]] = p
        bbox = bbox[order]
        items = np.asarray(items, np.int64)[order]
        labels = self._labels[items].astype(np.int32)
        H, W = self.canvas_hw
        scale = np.array([W, H, W, H], np.float32)
        boxes = np.concatenate([bbox[:, :2] + bbox[:, 2:] / 2, bbox[:, 2:]], 1) / scale
        return Scene(image=(canvas.astype(np.float32) / 255)[..., None], bbox=bbox,
                     boxes=boxes.astype(np.float32), labels=labels,
                     class_names=tuple(self.spec.singular[c] for c in labels),
                     captions=_captions(labels, bbox, self.spec), source_items=items, index=index)

    @property
    def max_caption_bytes(self) -> int:
        """Bytes of the longest caption these scenes can have (`longest_caption`)."""
        return longest_caption(self.source, self.max_items)


# ---------------------------------------------------------------------------------------- serving
def detection_batch(scenes: Scenes, indices: Any, max_objects: int | None = None
                    ) -> batcher.Batch:
    """The scenes `indices` as one detection batch, objects padded to max_objects (default
    scenes.max_items) with `batcher.pad_to_count`:

    {'image': float32 [b, H, W, 1], 'boxes': float32 [b, m, 4] normalised cxcywh,
     'labels': int32 [b, m], 'box_mask': bool [b, m]}; padded boxes and labels are 0.
    `indices` is a list of ints, or a `batcher.IndexBatch` whose filler rows (mask 0) come out
    as empty canvases with no objects.
    """
    max_objects = scenes.max_items if max_objects is None else max_objects
    if isinstance(indices, batcher.IndexBatch):
        real, size = indices.real(), len(indices.indices)  # filler rows come last
    else:
        real = [int(i) for i in indices]
        size = len(real)
    examples = [scenes[i] for i in real]
    images = np.zeros((size, *scenes.image_shape), np.float32)
    empty_boxes, empty_labels = np.zeros((0, 4), np.float32), np.zeros((0,), np.int32)
    boxes = [e.boxes for e in examples] + [empty_boxes] * (size - len(real))
    labels = [e.labels for e in examples] + [empty_labels] * (size - len(real))
    if examples:
        images[:len(examples)] = np.stack([e.image for e in examples])
    boxes, box_mask = batcher.pad_to_count(boxes, max_objects, dtype=np.float32, what="boxes")
    labels, _ = batcher.pad_to_count(labels, max_objects, dtype=np.int32, what="labels")
    return {"image": images, "boxes": boxes, "labels": labels, "box_mask": box_mask > 0}


class SceneDetection:
    """`Scenes` as a detection source, with the interface of
    `attn_jax.data.datasets.coco.CocoDetection` that the detection task uses: `len`,
    `image_shape`, `num_classes`, `class_names`, `SPLITS`, `augments` (False: scenes are not
    augmented), `detection_batch(indices, drawn=None)` (`detection_batch` padded to
    max_objects, default scenes.max_items) and `coco_dict(max_images)` (`coco_dict`)."""

    SPLITS = tuple(SPLITS)
    augments = False
    draw = None

    def __init__(self, scenes: Scenes, max_objects: int | None = None):
        self.scenes = scenes
        self.max_objects = scenes.max_items if max_objects is None else int(max_objects)

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.scenes.image_shape

    @property
    def num_classes(self) -> int:
        return self.scenes.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.scenes.class_names

    def detection_batch(self, indices: Any, drawn: Any = None) -> batcher.Batch:
        if drawn is not None:
            raise ValueError("scenes are not augmented: detection_batch takes no draws")
        return detection_batch(self.scenes, indices, self.max_objects)

    def coco_dict(self, max_images: int | None = None) -> dict[str, Any]:
        return coco_dict(self.scenes, max_images)


def detection_dataset(scenes: Scenes, global_batch_size: int, *, train: bool, seed: int = 0,
                      max_objects: int | None = None, process_index: int | None = None,
                      process_count: int | None = None) -> grain.MapDataset:
    """This host's detection batches through the shared batcher (`batcher.batched_dataset`,
    order 'epochs' in training, one padded pass in eval): element s is
    {**detection_batch(rows of step s), 'mask': float32 [b_local]}."""
    collate = functools.partial(detection_batch, scenes, max_objects=max_objects)
    return batcher.batched_dataset(len(scenes), global_batch_size, collate, train=train, seed=seed,
                                   order="epochs", process_index=process_index,
                                   process_count=process_count)


class CaptionPairs(collections.abc.Sequence):
    """(image float32 [H, W, 1], caption) pairs of scenes, for `seq2seq.image_text_dataset`.

    Pair k is scene k // r with its caption (k % r) mod (its number of references), r =
    references_per_scene: r = 1 gives the canonical captions only; r = MAX_REFERENCES visits
    every reference (those of scenes with fewer references repeat).
    """

    def __init__(self, scenes: Scenes, references_per_scene: int = 1):
        if not 1 <= references_per_scene <= MAX_REFERENCES:
            raise ValueError(f"references_per_scene={references_per_scene} must lie in "
                             f"[1, {MAX_REFERENCES}]")
        self.scenes, self.references_per_scene = scenes, references_per_scene

    def __len__(self) -> int:
        return len(self.scenes) * self.references_per_scene

    def __getitem__(self, k: int) -> tuple[np.ndarray, str]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        if not 0 <= k < len(self):
            raise IndexError(f"pair {k} out of range for {len(self)} pairs")
        scene = self.scenes[k // self.references_per_scene]
        return scene.image, scene.captions[(k % self.references_per_scene) % len(scene.captions)]


# ------------------------------------------------------------------------------------------- COCO
def coco_dict(scenes: Scenes, max_images: int | None = None) -> dict[str, Any]:
    """The first max_images (default all) scenes as a COCO detection dict: image id = scene
    index, file_name '{split}/{index:06d}.png', annotation ids 1, 2, ... in scene order,
    category_id = label + 1 (COCO keeps 0 free), bbox = `Scene.bbox` [x, y, w, h] pixels,
    area = w * h, iscrowd 0. Each image also carries its captions (not a COCO field)."""
    n = len(scenes) if max_images is None else min(max_images, len(scenes))
    H, W = scenes.canvas_hw
    images, annotations = [], []
    for i in range(n):
        scene = scenes[i]
        images.append({"id": i, "file_name": f"{scenes.split}/{i:06d}.png", "height": H,
                       "width": W, "captions": list(scene.captions)})
        for box, label in zip(scene.bbox.tolist(), scene.labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i,
                                "category_id": label + 1, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
    return {
        "info": {"description": f"attn_jax scenes ({scenes.source}, {scenes.split}, seed "
                                f"{scenes.seed})", "version": "1.0"},
        "images": images, "annotations": annotations,
        "categories": [{"id": c + 1, "name": name, "supercategory": scenes.source}
                       for c, name in enumerate(scenes.class_names)]}


def write_coco_json(split: str, path: str | os.PathLike, *, max_images: int | None = None,
                    **scene_kwargs) -> dict[str, Any]:
    """Writes `coco_dict(Scenes(split, **scene_kwargs), max_images)` as JSON to path (pure
    json: pycocotools reads it, none is needed to write it) and returns the dict."""
    coco = coco_dict(Scenes(split, **scene_kwargs), max_images)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))
    return coco
