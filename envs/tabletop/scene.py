"""The tabletop scene as an MJCF string: a table, a two-finger gripper, coloured objects and goal zones.

Everything is primitive geometry, so a 64x64 frame renders in well under a millisecond on a CPU (no meshes,
no shadows, no multisampling). Object shapes are fixed when the model is built (object ``i`` has shape
``SHAPES[i % 3]``); colours, zone colours and zone positions change per episode through the model's
``geom_rgba`` and ``body_pos``, so one compiled model serves every episode.

Frame: the table top is the plane z = 0, x points right and y away from the front camera.
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

# Colour names as they appear in instructions, with the RGBA they are rendered in.
COLOURS: Dict[str, Tuple[float, float, float, float]] = {
    "red": (0.85, 0.12, 0.12, 1.0),
    "green": (0.15, 0.70, 0.20, 1.0),
    "blue": (0.15, 0.30, 0.90, 1.0),
    "yellow": (0.95, 0.85, 0.10, 1.0),
    "purple": (0.55, 0.20, 0.75, 1.0),
    "orange": (0.98, 0.50, 0.05, 1.0),
}
COLOUR_NAMES = list(COLOURS)
# Colours reserved for generalization tests (``env.split``): with split=train no object or zone ever has one
# (so no training instruction names one); with split=heldout the named object always has one.
HELDOUT_COLOURS = ("orange", "purple")

# Object shapes, with the nouns instructions may use for them (the first is the canonical one).
SHAPES = ("box", "sphere", "cylinder")
SHAPE_NOUNS: Dict[str, Tuple[str, ...]] = {
    "box": ("cube", "block"),
    "sphere": ("ball", "sphere"),
    "cylinder": ("cylinder", "can"),
}

OBJECT_HALF_SIZE = 0.02  # metres: cube half-side, ball radius, cylinder radius and half-height
ZONE_RADIUS = 0.05
NUM_ZONES = 2
TABLE_HALF_SIZE = 0.4
FLOOR_HEIGHT = -0.3  # an invisible floor catches objects knocked off the table

# Gripper: the hand body's origin is the grasp point between the fingertips; its slide joints' positions are
# its world coordinates.
FINGER_MAX_OPENING = 0.04  # each finger's travel from the centre line; fully open gap = 0.08 m
HAND_RANGE = ((-0.3, 0.3), (-0.3, 0.3), (0.015, 0.3))  # reachable grasp-point positions (x, y, z)
HAND_HOME = (0.0, -0.15, 0.15)

CAMERA_NAMES = ("front", "wrist", "top")
# The top camera looks straight down on the placement square and the zones around it (+-0.22 m in view at
# 64 px: about 0.7 cm per pixel in both axes, where the front camera's 45-degree view spends about 0.8 cm per
# pixel across the table and 1.2 cm along it).
TOP_CAMERA_HEIGHT = 0.82
TOP_CAMERA_FOVY = 30
DISPLAY_CAMERA = "display"


def _look_at(position, target) -> str:
    """A camera's ``xyaxes`` (its x and y axes in world frame) so that it looks from ``position`` at ``target``."""
    forward = np.asarray(target, float) - np.asarray(position, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, (0.0, 0.0, 1.0))
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return " ".join(f"{v:.5f}" for v in (*right, *up))


def _floats(values) -> str:
    return " ".join(f"{v:g}" for v in values)


def _object_xml(index: int) -> str:
    shape = SHAPES[index % len(SHAPES)]
    size = {"box": [OBJECT_HALF_SIZE] * 3, "sphere": [OBJECT_HALF_SIZE],
            "cylinder": [OBJECT_HALF_SIZE, OBJECT_HALF_SIZE]}[shape]
    # Parked off to the side until the first reset places it; condim 4 adds torsional friction so a pinched
    # ball does not spin out of the fingers.
    return f"""
    <body name="object{index}" pos="{0.5 + 0.1 * index:g} 0.5 {OBJECT_HALF_SIZE:g}">
      <freejoint name="object{index}"/>
      <geom name="object{index}" type="{shape}" size="{_floats(size)}" mass="0.05" condim="4"
            friction="1.5 0.02 0.002" rgba="1 1 1 1"/>
    </body>"""


def _zone_xml(index: int) -> str:
    # Visual only (no collisions): a thin disc lying on the table.
    return f"""
    <body name="zone{index}" pos="{-0.5 - 0.15 * index:g} 0.5 0">
      <geom name="zone{index}" type="cylinder" size="{ZONE_RADIUS:g} 0.001" contype="0" conaffinity="0"
            rgba="1 1 1 1"/>
    </body>"""


def build_scene_xml(num_objects: int, image_size: int, video_size: int) -> str:
    """MJCF of the scene with ``num_objects`` objects and ``NUM_ZONES`` goal zones."""
    offscreen = max(image_size, video_size)
    hand_slides = "\n".join(
        f'      <joint name="hand_{axis}" type="slide" axis="{_floats(np.eye(3)[i])}" damping="40" '
        f'range="{_floats(HAND_RANGE[i])}"/>'
        for i, axis in enumerate("xyz")
    )
    hand_actuators = "\n".join(
        f'    <position name="hand_{axis}" joint="hand_{axis}" kp="800" ctrlrange="{_floats(HAND_RANGE[i])}" '
        f'forcerange="-60 60"/>'
        for i, axis in enumerate("xyz")
    )
    finger_bodies = "\n".join(
        f"""      <body name="finger_{side}" pos="0 0 0" gravcomp="1">
        <joint name="finger_{side}" type="slide" axis="0 {sign} 0" range="0 {FINGER_MAX_OPENING:g}" damping="5"/>
        <geom name="finger_{side}" type="box" size="0.01 0.006 0.03" pos="0 {sign * 0.006:g} 0.02" mass="0.05"
              condim="4" friction="1.5 0.02 0.002" rgba="0.3 0.3 0.32 1"/>
      </body>"""
        for side, sign in (("left", 1), ("right", -1))
    )
    finger_actuators = "\n".join(
        f'    <position name="finger_{side}" joint="finger_{side}" kp="600" ctrlrange="0 {FINGER_MAX_OPENING:g}" '
        f'forcerange="-15 15"/>'
        for side in ("left", "right")
    )
    objects = "".join(_object_xml(i) for i in range(num_objects))
    zones = "".join(_zone_xml(i) for i in range(NUM_ZONES))
    front = ((0.0, -0.42, 0.42), (0.0, -0.02, 0.0))
    display = ((0.45, -0.65, 0.55), (0.0, 0.0, 0.02))
    return f"""
<mujoco model="tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="0.008" integrator="implicitfast" gravity="0 0 -9.81"/>
  <visual>
    <global offwidth="{offscreen}" offheight="{offscreen}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/>
  </visual>
  <worldbody>
    <light name="top" pos="0 0 1.5" dir="0 0 -1" directional="true" castshadow="false" diffuse="0.4 0.4 0.4"/>
    <geom name="table" type="box" pos="0 0 -0.025" size="{TABLE_HALF_SIZE:g} {TABLE_HALF_SIZE:g} 0.025"
          rgba="0.55 0.42 0.3 1" friction="0.6 0.005 0.0001"/>
    <!-- An invisible floor: an object knocked off the table comes to rest below it (bounded positions). -->
    <geom name="floor" type="plane" pos="0 0 {FLOOR_HEIGHT:g}" size="0 0 1" rgba="0 0 0 0"/>
    <camera name="front" pos="{_floats(front[0])}" xyaxes="{_look_at(*front)}" fovy="50"/>
    <camera name="top" pos="0 0 {TOP_CAMERA_HEIGHT:g}" xyaxes="1 0 0 0 1 0" fovy="{TOP_CAMERA_FOVY:g}"/>
    <camera name="{DISPLAY_CAMERA}" pos="{_floats(display[0])}" xyaxes="{_look_at(*display)}" fovy="50"/>
    <body name="hand" pos="0 0 0" gravcomp="1">
{hand_slides}
      <geom name="palm" type="box" size="0.015 0.05 0.01" pos="0 0 0.06" mass="0.3" rgba="0.2 0.2 0.22 1"/>
      <geom name="wrist" type="cylinder" size="0.012 0.04" pos="0 0 0.11" mass="0.1" rgba="0.2 0.2 0.22 1"/>
      <camera name="wrist" pos="-0.07 0 0.08" xyaxes="{_look_at((-0.07, 0, 0.08), (0.04, 0, -0.04))}" fovy="80"/>
{finger_bodies}
    </body>{objects}{zones}
  </worldbody>
  <actuator>
{hand_actuators}
{finger_actuators}
  </actuator>
</mujoco>
"""
