"""Versions 2-4 of the bundled street scenes: 13 Cityscapes classes, long-tailed, textured, several
looks per class, and a target that differs from the source in style (``data.synthetic.version``: 4,
the default, is version 3 with traffic lights that wear no pole's or sign's colours, see
``LIGHT_LOOKS_V4``; version 3 is version 2 with walls that do not share a facade's look, see
``WALL_LOOKS_V3``).

What it is built to be (each property has a test in ``tests/test_synthetic_v2.py``):

- **No colour lookup.** Every class has three source looks (colour and texture), and looks overlap
  across classes (grey road, pavement, concrete, poles and silver cars; red walls, brick facades,
  red cars and red signs; greens of trees, grass, fences and poles). What tells a class is its
  texture (windows, pavers, wall panels, slats, leaves, blades of grass), its shape and its place in the
  scene.
- **A style shift, not a recolouring.** A target object keeps a look of its class: each class has
  three target looks, each the camera's version of a source look (duller, cast, with its own texture
  scale), jittered per object. The camera adds an illumination gradient, a colour cast, lower
  contrast, blur and sensor noise. ``difficulty`` moves the target from the source's looks (0) to
  the camera's (1), and strengthens the camera's effects up to 2.
- **Long-tailed like Cityscapes.** Road, building and vegetation take 15-30% of the pixels each; wall,
  fence, pole, traffic light, traffic sign and person 0.1-1.5% each; the target has more cars and
  persons and fewer trees than the source (a frequency shift, as from GTA5 to Cityscapes).
- **Thin classes at least 2 px wide.** Walls, fences, poles, lights, signs and persons are drawn on
  a grid of 2 x 2 pixel blocks, and after everything else: every pixel of those classes lies in a
  2 x 2 square of its class (at even image sizes).

Plain numpy, vectorised per object: a 64 x 128 image takes about 2 ms.
"""

from __future__ import annotations

import numpy as np

CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic_light",
    "traffic_sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "car",
)
(ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR) = range(len(CLASSES))
# On disk, labels are Cityscapes label ids (cityscapesScripts' labels.py), as in GTA5 and Cityscapes.
CITYSCAPES_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 26)
# Drawn on the 2 x 2 block grid, after every other class.
THIN_CLASSES = (WALL, FENCE, POLE, LIGHT, SIGN, PERSON)

# Objects per image (inclusive ranges): the class-frequency shift between the domains.
COUNTS = {
    "source": {"trees": (2, 5), "cars": (1, 3), "persons": (0, 2), "poles": (1, 3), "walls": (0, 1), "fences": (0, 1)},
    "target": {"trees": (2, 4), "cars": (1, 5), "persons": (1, 3), "poles": (1, 3), "walls": (0, 1), "fences": (0, 1)},
}


# --- looks ---------------------------------------------------------------------------------------
# A look: (RGB in 0..1, texture, texture parameters). Textures are drawn by ``_texture``. The target's
# looks are the camera's versions of the source's, index by index (look j of a class in the target
# is look j in the source seen by a camera), so ``difficulty`` can move one into the other.

SOURCE_LOOKS: dict[int, list[tuple]] = {
    ROAD: [
        ((0.36, 0.36, 0.38), "asphalt", {"grain": 0.10}),
        ((0.26, 0.26, 0.28), "asphalt", {"grain": 0.14}),
        ((0.46, 0.45, 0.43), "asphalt", {"grain": 0.08}),
    ],
    SIDEWALK: [
        ((0.62, 0.62, 0.60), "pavers", {"period": 3}),
        ((0.62, 0.38, 0.32), "pavers", {"period": 4}),
        ((0.45, 0.44, 0.42), "pavers", {"period": 3}),
    ],
    BUILDING: [
        ((0.62, 0.32, 0.26), "windows", {"px": 6, "py": 6, "wx": 3, "wy": 3, "glass": (0.20, 0.22, 0.28)}),
        ((0.42, 0.42, 0.44), "windows", {"px": 5, "py": 7, "wx": 2, "wy": 4, "glass": (0.30, 0.38, 0.48)}),
        ((0.76, 0.68, 0.52), "windows", {"px": 7, "py": 5, "wx": 4, "wy": 2, "glass": (0.18, 0.18, 0.20)}),
    ],
    WALL: [
        ((0.80, 0.78, 0.72), "panels", {"seam": 6}),
        ((0.60, 0.32, 0.26), "panels", {"seam": 4}),
        ((0.55, 0.56, 0.58), "panels", {"seam": 8}),
    ],
    FENCE: [
        ((0.36, 0.24, 0.14), "slats", {"period": 2}),
        ((0.16, 0.28, 0.18), "slats", {"period": 2}),
        ((0.20, 0.20, 0.22), "slats", {"period": 2}),
    ],
    POLE: [
        ((0.52, 0.52, 0.52), "metal", {}),
        ((0.16, 0.32, 0.20), "metal", {}),
        ((0.16, 0.16, 0.17), "metal", {}),
    ],
    LIGHT: [
        ((0.12, 0.12, 0.12), "lamp", {"lamp": (0.95, 0.15, 0.10)}),
        ((0.20, 0.30, 0.18), "lamp", {"lamp": (0.10, 0.90, 0.30)}),
        ((0.80, 0.70, 0.10), "lamp", {"lamp": (1.00, 0.65, 0.05)}),
    ],
    SIGN: [
        ((0.85, 0.12, 0.12), "sign", {"border": (0.95, 0.95, 0.95)}),
        ((0.12, 0.30, 0.80), "sign", {"border": (0.95, 0.95, 0.95)}),
        ((0.92, 0.80, 0.10), "sign", {"border": (0.10, 0.10, 0.10)}),
    ],
    VEGETATION: [
        ((0.20, 0.45, 0.15), "leaves", {"contrast": 0.35}),
        ((0.10, 0.30, 0.10), "leaves", {"contrast": 0.40}),
        ((0.55, 0.38, 0.18), "leaves", {"contrast": 0.30}),
    ],
    TERRAIN: [
        ((0.36, 0.56, 0.22), "grass", {"grain": 0.15}),
        ((0.58, 0.52, 0.30), "grass", {"grain": 0.12}),
        ((0.46, 0.36, 0.26), "grass", {"grain": 0.18}),
    ],
    SKY: [
        ((0.35, 0.55, 0.90), "sky", {"horizon": (0.75, 0.85, 0.95), "clouds": 0.3}),
        ((0.62, 0.63, 0.66), "sky", {"horizon": (0.78, 0.78, 0.80), "clouds": 0.15}),
        ((0.55, 0.62, 0.80), "sky", {"horizon": (0.90, 0.78, 0.70), "clouds": 0.25}),
    ],
    PERSON: [
        ((0.15, 0.15, 0.20), "person", {"legs": (0.10, 0.12, 0.30), "skin": (0.85, 0.65, 0.55)}),
        ((0.70, 0.15, 0.15), "person", {"legs": (0.15, 0.15, 0.15), "skin": (0.55, 0.38, 0.28)}),
        ((0.20, 0.35, 0.65), "person", {"legs": (0.70, 0.62, 0.48), "skin": (0.80, 0.60, 0.48)}),
    ],
    CAR: [
        ((0.72, 0.12, 0.10), "car", {"glass": (0.15, 0.18, 0.25)}),
        ((0.70, 0.70, 0.72), "car", {"glass": (0.20, 0.22, 0.28)}),
        ((0.14, 0.24, 0.58), "car", {"glass": (0.12, 0.12, 0.16)}),
    ],
}

TARGET_LOOKS: dict[int, list[tuple]] = {
    ROAD: [
        ((0.42, 0.40, 0.38), "asphalt", {"grain": 0.05}),
        ((0.34, 0.33, 0.32), "asphalt", {"grain": 0.06}),
        ((0.50, 0.48, 0.45), "asphalt", {"grain": 0.04}),
    ],
    SIDEWALK: [
        ((0.55, 0.56, 0.58), "pavers", {"period": 5}),
        ((0.52, 0.42, 0.40), "pavers", {"period": 6}),
        ((0.42, 0.42, 0.42), "pavers", {"period": 5}),
    ],
    BUILDING: [
        ((0.50, 0.38, 0.34), "windows", {"px": 8, "py": 6, "wx": 7, "wy": 2, "glass": (0.28, 0.32, 0.38)}),
        ((0.48, 0.48, 0.50), "windows", {"px": 7, "py": 7, "wx": 6, "wy": 3, "glass": (0.40, 0.46, 0.52)}),
        ((0.66, 0.62, 0.54), "windows", {"px": 9, "py": 6, "wx": 8, "wy": 2, "glass": (0.26, 0.27, 0.30)}),
    ],
    WALL: [
        ((0.70, 0.68, 0.64), "panels", {"seam": 8}),
        ((0.52, 0.38, 0.34), "panels", {"seam": 6}),
        ((0.50, 0.50, 0.52), "panels", {"seam": 10}),
    ],
    FENCE: [
        ((0.34, 0.28, 0.22), "slats", {"period": 3}),
        ((0.22, 0.30, 0.24), "slats", {"period": 3}),
        ((0.26, 0.26, 0.28), "slats", {"period": 3}),
    ],
    POLE: [
        ((0.45, 0.46, 0.48), "metal", {}),
        ((0.24, 0.32, 0.28), "metal", {}),
        ((0.22, 0.22, 0.24), "metal", {}),
    ],
    LIGHT: [
        ((0.18, 0.18, 0.20), "lamp", {"lamp": (0.85, 0.30, 0.25)}),
        ((0.24, 0.30, 0.24), "lamp", {"lamp": (0.35, 0.85, 0.45)}),
        ((0.62, 0.56, 0.24), "lamp", {"lamp": (0.90, 0.65, 0.25)}),
    ],
    SIGN: [
        ((0.70, 0.25, 0.24), "sign", {"border": (0.85, 0.85, 0.82)}),
        ((0.22, 0.34, 0.62), "sign", {"border": (0.85, 0.85, 0.82)}),
        ((0.76, 0.68, 0.28), "sign", {"border": (0.20, 0.20, 0.20)}),
    ],
    VEGETATION: [
        ((0.30, 0.34, 0.22), "leaves", {"contrast": 0.20}),
        ((0.18, 0.22, 0.18), "leaves", {"contrast": 0.22}),
        ((0.42, 0.36, 0.28), "leaves", {"contrast": 0.18}),
    ],
    TERRAIN: [
        ((0.40, 0.48, 0.28), "grass", {"grain": 0.07}),
        ((0.54, 0.50, 0.36), "grass", {"grain": 0.06}),
        ((0.44, 0.38, 0.32), "grass", {"grain": 0.08}),
    ],
    SKY: [
        ((0.68, 0.72, 0.80), "sky", {"horizon": (0.84, 0.86, 0.88), "clouds": 0.4}),
        ((0.72, 0.73, 0.75), "sky", {"horizon": (0.85, 0.85, 0.86), "clouds": 0.2}),
        ((0.74, 0.72, 0.76), "sky", {"horizon": (0.88, 0.82, 0.78), "clouds": 0.3}),
    ],
    PERSON: [
        ((0.22, 0.22, 0.26), "person", {"legs": (0.18, 0.20, 0.32), "skin": (0.75, 0.60, 0.52)}),
        ((0.58, 0.26, 0.26), "person", {"legs": (0.20, 0.20, 0.22), "skin": (0.52, 0.40, 0.32)}),
        ((0.30, 0.40, 0.58), "person", {"legs": (0.60, 0.56, 0.48), "skin": (0.72, 0.58, 0.50)}),
    ],
    CAR: [
        ((0.58, 0.22, 0.20), "car", {"glass": (0.22, 0.24, 0.30)}),
        ((0.62, 0.63, 0.66), "car", {"glass": (0.28, 0.30, 0.34)}),
        ((0.24, 0.30, 0.50), "car", {"glass": (0.18, 0.18, 0.22)}),
    ],
}


# Version 3: version 2's scenes, drawn from the same random numbers, with walls a model
# can tell from facades. In version 2 a wall's second look was a facade's brick red, the target's
# grey wall was the target's grey facade, and the panel seams were faint: the oracle (every target
# pixel labeled) reached a wall IoU of 0.13-0.27 on calibration seeds 100-104, below every other
# class. Version 3's walls are ochre stucco in place of red, the target's walls are lighter, and
# seams and coping are marked more strongly; every other class looks as in version 2, and every
# pixel that is not a wall (or next to one, through the target camera's blur) is version 2's.
WALL_LOOKS_V3 = {
    "source": [
        ((0.80, 0.78, 0.72), "panels", {"seam": 6, "seam_shade": 0.45, "coping_light": 1.35}),
        ((0.74, 0.62, 0.34), "panels", {"seam": 4, "seam_shade": 0.45, "coping_light": 1.35}),
        ((0.55, 0.56, 0.58), "panels", {"seam": 8, "seam_shade": 0.45, "coping_light": 1.35}),
    ],
    "target": [
        ((0.74, 0.72, 0.66), "panels", {"seam": 8, "seam_shade": 0.45, "coping_light": 1.35}),
        ((0.64, 0.56, 0.36), "panels", {"seam": 6, "seam_shade": 0.45, "coping_light": 1.35}),
        ((0.58, 0.60, 0.66), "panels", {"seam": 10, "seam_shade": 0.45, "coping_light": 1.35}),
    ],
}
# Version 4: version 3's scenes, drawn from the same random numbers, with traffic lights a model can
# tell from the poles they hang on and the signs above them. In versions 2 and 3 a light's housings
# were a pole's dark grey and dark green and a yellow sign's yellow, and one lens band was lit: the
# oracle reached a light IoU of 0.23-0.26 on three of the calibration seeds, the lowest class. A
# version 4 light shows all three lenses, red over amber over green, the lit one bright and the other
# two dim, in a housing no pole or sign wears. Every pixel that is not a light (or next to one,
# through the target camera's blur) is version 3's.
# The lenses as a game draws them and as the camera sees them (duller), the same for every housing.
_LENSES_V4 = {
    "source": {"red": (0.95, 0.15, 0.10), "amber": (1.00, 0.65, 0.05), "green": (0.10, 0.90, 0.30), "unlit": 0.35},
    "target": {"red": (0.85, 0.30, 0.25), "amber": (0.90, 0.65, 0.25), "green": (0.35, 0.85, 0.45), "unlit": 0.4},
}
_HOUSINGS_V4 = {
    "source": [(0.04, 0.04, 0.05), (0.08, 0.10, 0.30), (0.30, 0.20, 0.08)],
    "target": [(0.08, 0.08, 0.10), (0.12, 0.14, 0.36), (0.36, 0.26, 0.12)],
}
LIGHT_LOOKS_V4 = {
    domain: [(housing, "lenses", _LENSES_V4[domain]) for housing in housings]
    for domain, housings in _HOUSINGS_V4.items()
}
# (source looks, target looks) of each version this module draws
LOOKS_OF_VERSION: dict[int, tuple[dict, dict]] = {
    2: (SOURCE_LOOKS, TARGET_LOOKS),
    3: ({**SOURCE_LOOKS, WALL: WALL_LOOKS_V3["source"]}, {**TARGET_LOOKS, WALL: WALL_LOOKS_V3["target"]}),
    4: (
        {**SOURCE_LOOKS, WALL: WALL_LOOKS_V3["source"], LIGHT: LIGHT_LOOKS_V4["source"]},
        {**TARGET_LOOKS, WALL: WALL_LOOKS_V3["target"], LIGHT: LIGHT_LOOKS_V4["target"]},
    ),
}


# --- layout --------------------------------------------------------------------------------------


class _Canvas:
    """The class and instance maps being painted; later paint covers earlier paint."""

    def __init__(self, height: int, width: int):
        self.label = np.full((height, width), SKY, dtype=np.uint8)
        self.instance = np.zeros((height, width), dtype=np.int32)
        self.classes: dict[int, int] = {0: SKY}  # instance id -> class (0: the sky)

    def paint(self, mask: np.ndarray, cls: int) -> None:
        new_id = len(self.classes)
        self.classes[new_id] = cls
        self.label[mask] = cls
        self.instance[mask] = new_id


def _blocks(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A mask drawn on the grid of 2 x 2 blocks, at full resolution (every part at least 2 px wide)."""
    return np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)[:height, :width]


def layout(rng: np.random.Generator, height: int, width: int, domain: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(class map (H, W) uint8, instance map (H, W) int32, instance id -> class) of one street scene.

    Sky, then buildings on the horizon, tree crowns, the ground (road towards a vanishing point,
    sidewalks, grass verges and hedges beyond), cars on the road; then, on the 2 x 2 block grid, walls
    and fences standing along a sidewalk's outer edge, poles on the sidewalks with signs and lights,
    and persons.
    """
    counts = COUNTS[domain]
    canvas = _Canvas(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    horizon = height * rng.uniform(0.36, 0.46)

    # Buildings: a row of blocks standing on the horizon, some gaps of sky.
    x = -width * rng.uniform(0, 0.1)
    while x < width:
        w = width * rng.uniform(0.10, 0.28)
        if rng.random() < 0.88:
            top = horizon - height * rng.uniform(0.18, 0.40)
            base = horizon + height * rng.uniform(0.0, 0.04)
            canvas.paint((yy >= top) & (yy < base) & (xx >= x) & (xx < x + w), BUILDING)
        x += w

    # Tree crowns: ellipses with a ragged edge near the horizon.
    for _ in range(rng.integers(*counts["trees"], endpoint=True)):
        cx, cy = rng.uniform(0, width), horizon - height * rng.uniform(0.02, 0.22)
        rx, ry = width * rng.uniform(0.05, 0.12), height * rng.uniform(0.10, 0.22)
        phase, lobes = rng.uniform(0, 2 * np.pi), rng.integers(5, 9)
        ragged = 1 + 0.12 * np.sin(lobes * np.arctan2(yy - cy, (xx - cx) * ry / rx) + phase)
        canvas.paint(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= ragged**2, VEGETATION)

    # Ground: the road narrows towards a vanishing point; sidewalks, grass verges and hedges beside it.
    # Every boundary is a straight line in the image: outward offset = constant + t * width * k.
    ground = yy >= horizon
    depth = max(height - horizon, 1)
    t = np.clip((yy - horizon) / depth, 0, 1)
    vanish_x = width * rng.uniform(0.35, 0.65)
    centre = vanish_x + t * (width / 2 - vanish_x)
    road_k = rng.uniform(0.44, 0.58)
    half_road = 1.5 + t * width * road_k
    offset = xx - centre
    walk_edge = {}  # side -> (a, b): the sidewalk's outer edge is at x = a + b t
    for side in (-1, 1):
        outward = offset * side  # distance from the road centre towards this side
        walk_k = rng.uniform(0.06, 0.12)
        walk = half_road + 1 + t * width * walk_k
        verge = walk + 0.5 + t * width * rng.uniform(0.05, 0.15)
        beyond = VEGETATION if rng.random() < 0.5 else BUILDING  # a hedge, or facades down to the ground
        canvas.paint(ground & (outward > verge), beyond)
        canvas.paint(ground & (outward > walk) & (outward <= verge), TERRAIN)
        canvas.paint(ground & (outward > half_road) & (outward <= walk), SIDEWALK)
        walk_edge[side] = (vanish_x + side * 2.5, width / 2 - vanish_x + side * width * (road_k + walk_k))
    canvas.paint(ground & (np.abs(offset) <= half_road), ROAD)

    # Cars on the road: boxes with a cabin, larger when nearer, drawn far to near.
    cars = sorted(rng.uniform(horizon + 3, height) for _ in range(rng.integers(*counts["cars"], endpoint=True)))
    for bottom in cars:
        tb = (bottom - horizon) / depth
        cw, ch = width * (0.06 + 0.26 * tb), height * (0.05 + 0.16 * tb)
        cx = vanish_x + tb * (width / 2 - vanish_x) + rng.uniform(-0.6, 0.6) * (1.5 + tb * width * 0.5)
        box = (np.abs(xx - cx) <= cw / 2) & (yy <= bottom) & (yy >= bottom - ch)
        cabin = (np.abs(xx - cx) <= cw * 0.32) & (yy < bottom - ch) & (yy >= bottom - ch * 1.5)
        canvas.paint(box | cabin, CAR)

    # The thin classes, on the 2 x 2 block grid (block coordinates: full-resolution / 2).
    bh, bw = (height + 1) // 2, (width + 1) // 2
    by, bx = np.mgrid[0:bh, 0:bw].astype(np.float64)
    bhorizon, bvanish = horizon / 2, vanish_x / 2

    def paint_blocks(mask, cls):
        canvas.paint(_blocks(mask, height, width), cls)

    # Walls and fences stand on a sidewalk's outer edge, along the road: in each block column, from the
    # edge's ground row up by a height that grows with nearness.
    for kind, cls in (("walls", WALL), ("fences", FENCE)):
        for _ in range(rng.integers(*counts[kind], endpoint=True)):
            a, b = walk_edge[int(rng.choice([-1, 1]))]
            near = rng.uniform(0.05, 0.5)
            far = min(1.0, near + rng.uniform(0.2, 0.4))
            rise = height * rng.uniform(0.16, 0.24)
            t_col = (2 * bx[0] + 1 - a) / b  # the edge's depth at each block column's centre
            ground_row = horizon + t_col * depth
            top = np.floor((ground_row - 2 - t_col * rise) / 2)[None]
            bottom = np.floor(ground_row / 2)[None]
            band = ((t_col >= near) & (t_col <= far))[None] & (by >= top) & (by <= bottom)
            paint_blocks(band, cls)

    bt_scale = max(bh - bhorizon, 1)
    for _ in range(rng.integers(*counts["poles"], endpoint=True)):
        base_y = rng.uniform(bhorizon + 1, bh)
        tb = (base_y - bhorizon) / bt_scale
        side = rng.choice([-1, 1])
        edge = bvanish + tb * (bw / 2 - bvanish) + side * (0.75 + tb * width * 0.5 / 2)
        px = float(np.clip(edge + side * (1 + tb * width * 0.05 / 2), 0, bw - 2))
        thick = 1 + int(tb > 0.35)
        top = max(base_y - height * (0.14 + 0.26 * tb) / 2, 0)
        paint_blocks((bx >= np.floor(px)) & (bx < np.floor(px) + thick) & (by >= top) & (by < base_y), POLE)
        size = 3 + int(tb > 0.5)
        if rng.random() < 0.55:  # a sign at the top
            sx = np.floor(px) + thick / 2 - size / 2
            face = (bx >= sx) & (bx < sx + size) & (by >= top) & (by < top + size)
            paint_blocks(face, SIGN)
            top = top + size
        if rng.random() < 0.45:  # a traffic light below it, on the road side
            lamp_w = 2
            lx = np.floor(px) + (thick if side < 0 else -lamp_w)
            housing = (bx >= lx) & (bx < lx + lamp_w) & (by >= top) & (by < top + size + 2)
            paint_blocks(housing, LIGHT)

    for _ in range(rng.integers(*counts["persons"], endpoint=True)):
        foot = rng.uniform(bhorizon + 1.5, bh)
        tb = (foot - bhorizon) / bt_scale
        tall = max(2.0, height * (0.07 + 0.20 * tb) / 2)
        wide = max(1.0, tall * 0.45)
        side = rng.choice([-1, 1])
        edge = bvanish + tb * (bw / 2 - bvanish) + side * (0.75 + tb * width * 0.5 / 2)
        cx = float(np.clip(edge + side * rng.uniform(1, 2 + 6 * tb), 0, bw - 1))
        body = (np.abs(bx + 0.5 - cx) <= wide / 2 + 0.01) & (by < foot) & (by >= foot - tall)
        paint_blocks(body, PERSON)
    return canvas.label, canvas.instance, canvas.classes


# --- rendering -----------------------------------------------------------------------------------


def _smooth(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Smooth noise (H, W), about N(0, 1): a coarse Gaussian grid upsampled bilinearly."""
    ch, cw = cells, 2 * cells
    coarse = rng.normal(0, 1, (ch + 1, cw + 1))
    fy = np.linspace(0, ch, height, endpoint=False)
    fx = np.linspace(0, cw, width, endpoint=False)
    y0, x0 = fy.astype(int), fx.astype(int)
    wy, wx = (fy - y0)[:, None], (fx - x0)[None, :]
    a, b = coarse[y0][:, x0], coarse[y0][:, x0 + 1]
    c, d = coarse[y0 + 1][:, x0], coarse[y0 + 1][:, x0 + 1]
    return (a * (1 - wx) + b * wx) * (1 - wy) + (c * (1 - wx) + d * wx) * wy


def _texture(
    rng: np.random.Generator, look: tuple, mask: np.ndarray, yy: np.ndarray, xx: np.ndarray, fields: dict
) -> np.ndarray:
    """RGB (n, 3) of the n pixels of one object's ``mask`` in ``look``: its colour, jittered per object,
    shaped by its texture. ``fields`` holds noise shared by the image (leaves, grain)."""
    colour, kind, params = look
    colour = np.asarray(colour) + rng.normal(0, 0.03, 3)
    ys, xs = yy[mask], xx[mask]
    n = len(ys)
    out = np.repeat(colour[None], n, axis=0)
    if kind in ("asphalt", "grass"):
        out *= 1 + params["grain"] * fields["grain"][mask][:, None]
        if kind == "grass":  # blades: a little yellow and green variation
            out[:, 1] += 0.05 * fields["fine"][mask]
    elif kind == "pavers":
        period = params["period"]
        oy, ox = rng.integers(period), rng.integers(period)
        joint = ((ys + oy) % period == 0) | ((xs + ox) % period == 0)
        out[joint] *= 0.78
    elif kind == "windows":
        oy, ox = rng.integers(params["py"]), rng.integers(params["px"])
        glass = ((ys + oy) % params["py"] < params["wy"]) & ((xs + ox) % params["px"] < params["wx"])
        out[glass] = np.asarray(params["glass"]) + rng.normal(0, 0.02, 3)
    elif kind == "panels" and n:  # slabs with dark vertical seams under a light coping
        ox = rng.integers(params["seam"])
        out[(xs + ox) % params["seam"] == 0] *= params.get("seam_shade", 0.65)
        top_of_column = np.zeros(xs.max() + 1, dtype=ys.dtype) + ys.max()
        np.minimum.at(top_of_column, xs, ys)
        out[ys <= top_of_column[xs] + 1] *= params.get("coping_light", 1.3)
    elif kind == "slats":  # boards with bright gaps between them
        out[(xs % params["period"]) == 0] = np.minimum(out[(xs % params["period"]) == 0] * 2.2 + 0.15, 1.0)
    elif kind == "leaves":
        out *= 1 + params["contrast"] * fields["leaves"][mask][:, None]
    elif kind == "sky":
        top = ys.min() if n else 0
        fall = np.clip((ys - top) / max(fields["horizon"] - top, 1), 0, 1)[:, None]
        out = out * (1 - fall) + np.asarray(params["horizon"]) * fall
        cloud = np.clip(fields["clouds"][mask], 0, None)[:, None] * params["clouds"]
        out = out * (1 - cloud) + cloud
    elif kind == "metal" and n:  # lit from the left: the pole's left column lighter
        out[xs == xs.min()] *= 1.25
    elif kind == "sign":
        inner = _interior(mask)
        out[~inner[mask]] = np.asarray(params["border"])
    elif kind == "lamp":
        top, bottom = ys.min(), ys.max()
        third = rng.integers(3)
        band = (ys - top) * 3 // max(bottom - top + 1, 1) == third
        out[band] = np.asarray(params["lamp"])
    elif kind == "lenses":  # red over amber over green; one lit (drawn as ``lamp`` draws it), two dim
        top, bottom = ys.min(), ys.max()
        third = rng.integers(3)
        band = (ys - top) * 3 // max(bottom - top + 1, 1)
        for index, lens in enumerate(("red", "amber", "green")):
            shade = 1.0 if index == third else params["unlit"]
            out[band == index] = shade * np.asarray(params[lens]) + (1 - shade) * out[band == index]
    elif kind == "person":
        top, bottom = ys.min(), ys.max()
        rel = (ys - top) / max(bottom - top + 1, 1)
        out[rel < 0.2] = np.asarray(params["skin"])
        out[rel >= 0.55] = np.asarray(params["legs"])
    elif kind == "car":
        top, bottom = ys.min(), ys.max()
        left, right = xs.min(), xs.max()
        rel_y = (ys - top) / max(bottom - top + 1, 1)
        rel_x = (xs - left) / max(right - left + 1, 1)
        out[(rel_y > 0.1) & (rel_y < 0.38) & (rel_x > 0.3) & (rel_x < 0.7)] = np.asarray(params["glass"])
        wheels = (rel_y > 0.82) & ((rel_x < 0.3) | (rel_x > 0.7))
        out[wheels] = 0.08
    return out


def _interior(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` whose four neighbours are all in it."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[0], inner[-1], inner[:, 0], inner[:, -1] = False, False, False, False
    return inner


def _soft_blur(image: np.ndarray) -> np.ndarray:
    """A camera's softness: the (1, 2, 1) / 4 kernel along each axis of an (H, W, 3) image, edges
    replicated (a 2 px structure keeps half its contrast)."""
    padded = np.pad(image, ((1, 1), (0, 0), (0, 0)), mode="edge")
    image = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    padded = np.pad(image, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return (padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]) / 4


def render(
    rng: np.random.Generator,
    label: np.ndarray,
    instance: np.ndarray,
    classes: dict,
    domain: str,
    difficulty: float = 1.0,
    version: int = 4,
) -> np.ndarray:
    """RGB float32 (H, W, 3) in [0, 1] of a layout in the domain's style, with ``version``'s looks
    (``LOOKS_OF_VERSION``).

    Each object takes one of its class's looks (drawn per object) with its own colour jitter. In the
    target, look j is the source's look j moved ``min(difficulty, 1)`` of the way to the camera's look
    j (colour and texture scale), and the camera's effects (illumination gradient, colour cast,
    contrast, blur, noise) scale with ``difficulty``.
    """
    height, width = label.shape
    yy, xx = np.mgrid[0:height, 0:width]
    sky_rows = np.flatnonzero((label != SKY).any(axis=1))
    fields = {
        "grain": rng.normal(0, 1, (height, width)),
        "fine": rng.normal(0, 1, (height, width)),
        "leaves": 0.6 * _smooth(rng, height, width, max(2, width // 6)) + 0.8 * rng.normal(0, 1, (height, width)),
        "clouds": _smooth(rng, height, width, 3),
        "horizon": sky_rows.max() if len(sky_rows) else height,
    }
    d = float(difficulty) if domain == "target" else 0.0
    mix = min(d, 1.0)
    source_looks, target_looks = LOOKS_OF_VERSION[version]
    image = np.zeros((height, width, 3), dtype=np.float64)
    for object_id in np.unique(instance):
        cls = classes[int(object_id)]
        mask = instance == object_id
        j = int(rng.integers(len(source_looks[cls])))
        look = source_looks[cls][j]
        if domain == "target":
            look = _blend_looks(look, target_looks[cls][j], mix)
        image[mask] = _texture(rng, look, mask, yy, xx, fields)
    if domain == "source":
        image *= 1 + rng.normal(0, 0.04)  # a game engine's mild lighting variation
        image += rng.normal(0, 0.008, image.shape)
        return np.clip(image, 0, 1).astype(np.float32)

    # The camera: light falling across the scene, a colour cast, a duller response, blur, noise.
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) / 1.5
    image *= (1 + d * (-0.25 + 0.5 * ramp))[..., None] * (1 + d * rng.uniform(-0.25, 0.1))
    image += d * rng.normal(0, 0.06, 3)
    image = 0.5 + (image - 0.5) * (1 - 0.25 * min(d, 1.5))
    if rng.random() < 0.7 * mix:
        image = _soft_blur(image)
    image += d * rng.normal(0, 0.02, image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def _blend_looks(source: tuple, target: tuple, mix: float) -> tuple:
    """Look ``mix`` of the way from ``source`` to ``target`` (same texture kind): colours interpolated,
    integer texture sizes rounded, the rest taken from the nearer end."""
    if mix <= 0:
        return source
    if mix >= 1:
        return target
    (c0, kind, p0), (c1, _, p1) = source, target
    colour = tuple((1 - mix) * a + mix * b for a, b in zip(c0, c1))
    params = {}
    for key, a in p0.items():
        b = p1[key]
        if isinstance(a, tuple):
            params[key] = tuple((1 - mix) * u + mix * v for u, v in zip(a, b))
        elif isinstance(a, int):
            params[key] = int(round((1 - mix) * a + mix * b))
        else:
            params[key] = (1 - mix) * a + mix * b
    return colour, kind, params


def generate(rng: np.random.Generator, height: int, width: int, domain: str, difficulty: float, version: int = 4):
    """(image float32 (H, W, 3) in [0, 1], label uint8 (H, W) of class indices) of one scene, in
    generator ``version`` 2, 3 or 4 (the same scene from the same ``rng``; only looks differ: version 3's
    walls, version 4's traffic lights)."""
    label, instance, classes = layout(rng, height, width, domain)
    return render(rng, label, instance, classes, domain, difficulty, version), label
