"""Class legends: each class's pixel value, name and colour, from the labels to the map's sidecars.

A class map's pixel value is the class's *code* when the labels carried one (`--code-field`, kept
from the source nomenclature, e.g. LULC_ID 1, 2, 3, 4, 8) and its id 0..K-1 otherwise. This module
holds what every step needs to keep a legend intact:
- `default_colors(names)`: land-cover aware colours where the names say what a class is (forest
  greens, water blue, artificial red-grey, crops yellow, ...), a qualitative palette otherwise;
- `class_codes(...)`: one code per class from per-feature codes, checked;
- `read_color_file` / `apply_color_file`: `--colors FILE` (CSV `code_or_name,#rrggbb`, a QGIS style
  `.qml`, or a `.clr` colour map) onto the classes;
- `qml_text` / `clr_text`: the QGIS style and colour map written beside every class map.
"""

from __future__ import annotations

import csv
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np

from sitscli.core.errors import ConfigError, DataContentError, DataFormatError
from sitscli.core.io import require_exists
from sitscli.core.progress import log

# Codes are stored as uint8 / uint16 pixel values; the type's largest value is kept for nodata.
MAX_CODE = 65534
LEGEND_MARK = "sitscli class map legend"   # in the sidecars written here, so that stale ones can be told apart

# Land-cover keywords -> shades, used in turn by the classes that match the same entry. A keyword
# matches at the start of a word of the lower-cased class name (a regex; `\b` ends a whole word).
# Colours keep to the spirit of the CORINE Land Cover legend: forests dark green, shrubs olive,
# grassland light green, crops yellow to orange, artificial surfaces red and grey, bare ground
# brown, water blue. Entries are tried in order, so "tree crops" is a tree and "urban green" is urban.
LAND_COVER_COLORS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("water", "river", "lake", r"sea\b", "ocean", "reservoir", "pond"), ("#1f78b4", "#4a9bd6", "#0b4f8a")),
    (("wetland", "marsh", "bog", "swamp", "mangrove", "peat"), ("#4fb8a8", "#2e8b7a")),
    (("snow", r"ice\b", "glacier"), ("#e8eef4", "#c6d8ea")),
    (("urban", "artificial", "built", "building", "road", "settlement", "impervious", "industr", r"city\b",
      "residential"), ("#c0504d", "#8c8c8c", "#e06666", "#a03030")),
    (("bare", "soil", "rock", "sand", "barren", "quarr", r"mines?\b"), ("#a6761d", "#c49a6c", "#8b5a2b")),
    (("forest", "tree", "wood", "conifer", "broadleaf", "deciduous", "evergreen", "pine", r"oak\b", "beech",
      "spruce", "plantation"), ("#1b7837", "#33a02c", "#0b5d1e", "#4d9221")),
    (("shrub", "scrub", "schrub", "heath", "bush", "maquis"), ("#8fa33a", "#a9b96b")),
    (("grass", "meadow", "pasture", "prairie", "lawn", "rangeland", "herbaceous"), ("#b2df8a", "#98d46e", "#c8e6a0")),
    (("orchard", "vineyard", "vine", "olive", "fruit"), ("#9e4fa5", "#c27bb0")),
    (("wheat", "barley", "cereal", r"oats?\b", r"rye\b", "triticale", "grain", "maize", "corn", "rapeseed", "colza",
      "canola", "sunflower", "soy", r"rice\b", "potato", "beet", "crop", "cultivated", "arable", "agri", "farm",
      "fallow"), ("#f0d43a", "#e6ab02", "#fee08b", "#d9b300", "#fdae61", "#c9a227", "#ffd92f", "#e08214",
                  "#fec44f", "#d8b365", "#f4a460", "#f6e8c3")),
)
_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{8})$")


def parse_color(text: str) -> tuple[int, int, int, int]:
    """'#rrggbb' (or '#rrggbbaa') -> (r, g, b, a)."""
    value = str(text).strip()
    if not _HEX.match(value):
        raise ConfigError(f"class colour {text!r} is not a '#rrggbb' colour: fix the class colours")
    value = value.lstrip("#")
    rgba = [int(value[i:i + 2], 16) for i in range(0, len(value), 2)]
    return tuple(rgba + [255] * (4 - len(rgba)))  # type: ignore[return-value]


def hex_color(r: float, g: float, b: float) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(round(v)) for v in (r, g, b)))


# ------------------------------------------------------------------------------------ defaults

def qualitative_colors(n: int) -> list[str]:
    """n colours of matplotlib's qualitative tab20 palette, cycled past 20."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [hex_color(*(255 * c for c in cmap(i % 20)[:3])) for i in range(n)]


def land_cover_color(name: str, used: dict[int, int]) -> str | None:
    """The colour of the first LAND_COVER_COLORS entry whose keyword starts a word of `name`, or
    None; `used` counts the classes already given each entry, so that several crops get several yellows."""
    lower = str(name).lower()
    for entry, (keywords, shades) in enumerate(LAND_COVER_COLORS):
        if any(re.search(r"\b" + keyword, lower) for keyword in keywords):
            turn = used.get(entry, 0)
            used[entry] = turn + 1
            return _varied(shades[turn % len(shades)], turn // len(shades))
    return None


def _varied(color: str, step: int) -> str:
    """`color` itself (step 0), then mixed with white and black in turn, further each time, so that
    more classes than an entry has shades still get distinct colours of its hue."""
    if step == 0:
        return color
    r, g, b, _ = parse_color(color)
    toward = 255 if step % 2 else 0
    share = min(0.8, 0.3 * ((step + 1) // 2))
    return hex_color(*(v + share * (toward - v) for v in (r, g, b)))


def default_colors(names: Sequence[str]) -> list[str]:
    """One '#rrggbb' per class: land-cover aware where the name says what it is, else tab20 in turn."""
    used: dict[int, int] = {}
    colors = [land_cover_color(name, used) for name in names]
    fallback = iter(qualitative_colors(sum(c is None for c in colors)))
    return [c if c is not None else next(fallback) for c in colors]


# --------------------------------------------------------------------------------------- codes

def class_codes(class_ids: np.ndarray, raw_codes: Sequence, names: Sequence[str], *, field: str, where: str) -> list[int]:
    """The one code of each class from per-item codes.

    Args:
        class_ids: (N,) class id 0..K-1 of each item (feature, sample); -1 items are ignored.
        raw_codes: (N,) the item's value of the code field (numbers or numeric text).
        names: the K class names (for messages).
        field: the code field's name; where: the file, for messages.
    Raises a one-line error when a code is not a whole number in 0..MAX_CODE, when a class has two
    codes, or when two classes share one.
    """
    ids = np.asarray(class_ids)
    values = np.asarray([_as_code(v) for v in raw_codes], dtype=np.float64)
    labelled = ids >= 0
    bad = labelled & np.isnan(values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataContentError(f"{where}: {field!r} holds {raw_codes[i]!r} for class {names[ids[i]]!r}, not a class code: "
                               f"codes must be whole numbers 0..{MAX_CODE}")
    codes = []
    for k, name in enumerate(names):
        found = np.unique(values[ids == k])
        if found.size != 1:
            shown = " and ".join(str(int(c)) for c in found[:3])
            raise DataContentError(f"{where}: class {name!r} has codes {shown} in {field!r}: one code per class "
                                   f"(give a code field and a class field that match one to one)")
        codes.append(int(found[0]))
    repeated = sorted({c for c in codes if codes.count(c) > 1})
    if repeated:
        sharing = [n for n, c in zip(names, codes) if c == repeated[0]]
        raise DataContentError(f"{where}: classes {', '.join(map(repr, sharing))} share code {repeated[0]} in {field!r}: "
                               "one code per class (give a class field that matches the codes)")
    return codes


def order_by_code(names: Sequence[str], codes: Sequence[int], ids: np.ndarray) -> tuple[list[str], list[int], np.ndarray]:
    """Classes renumbered in the order of their codes, so the legend lists them as the source does.

    ids: (N,) class ids of items (-1 stays -1) -> (names, codes, ids) in code order.
    """
    order = np.argsort(codes, kind="stable")              # new id -> old id
    new_of_old = np.empty(len(order) + 1, dtype=np.int64)
    new_of_old[order] = np.arange(len(order))
    new_of_old[-1] = -1                                   # index -1: unlabelled items
    return [names[i] for i in order], [int(codes[i]) for i in order], new_of_old[np.asarray(ids)]


def _as_code(value) -> float:
    """A whole number 0..MAX_CODE as float, anything else NaN."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return number if number.is_integer() and 0 <= number <= MAX_CODE else float("nan")


def pixel_values(num_classes: int, codes: Sequence[int] | None) -> list[int]:
    """What a class map stores for each class: its code when codes exist, else its id."""
    return [int(c) for c in codes] if codes else list(range(num_classes))


# --------------------------------------------------------------------------------- colour files

@dataclass
class ColorEntry:
    """One line of a colour file: the pixel value (code) it names, its label or class name, its colour."""

    value: int | None
    label: str | None
    color: str


def read_color_file(path: str | Path) -> list[ColorEntry]:
    """Entries of a colour file: CSV `code_or_name,#rrggbb` (a header line allowed), a QGIS style
    `.qml` (paletted renderer entries) or a `.clr` colour map (`value r g b [alpha [label]]`)."""
    path = require_exists(path, "--colors file")
    suffix = path.suffix.lower()
    if suffix in (".qml", ".clr"):
        entries = (_read_qml if suffix == ".qml" else _read_clr)(path)
    else:  # .csv, or a .txt that may be CSV or a QGIS colour map export ("2,0,128,0,255,forest")
        csv_line = re.compile(r"^[^,#][^,]*,\s*#?[0-9a-fA-F]{6}([0-9a-fA-F]{2})?\s*$", re.MULTILINE)
        entries = (_read_csv if csv_line.search(path.read_text(encoding="utf-8-sig")) else _read_clr)(path)
    if not entries:
        raise DataFormatError(f"--colors {path} holds no colour: give CSV lines code_or_name,#rrggbb, a QGIS .qml style "
                              "or a .clr colour map")
    return entries


def _read_csv(path: Path) -> list[ColorEntry]:
    entries = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            cells = [c.strip() for c in row]
            if not any(cells) or cells[0].startswith("#"):
                continue
            if len(cells) < 2 or not _HEX.match(cells[1]):
                if number == 1:
                    continue  # a header line
                raise DataFormatError(f"--colors {path} line {number}: {','.join(row)!r} is not code_or_name,#rrggbb")
            key = cells[0]
            entries.append(ColorEntry(int(key) if key.isdigit() else None, key, "#" + cells[1].lstrip("#").lower()[:6]))
    return entries


def _read_clr(path: Path) -> list[ColorEntry]:
    """`value r g b [alpha [label ...]]`, separated by spaces, commas or colons (as QGIS reads them)."""
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        parts = [p for p in re.split(r"[\s,:]+", line.strip()) if p]
        if len(parts) < 4 or line.lstrip().startswith("#") or not parts[0].lstrip("-").isdigit():
            continue  # comments, headers such as QGIS's INTERPOLATION:EXACT
        try:
            rgb = [float(p) for p in parts[1:4]]
        except ValueError:
            raise DataFormatError(f"--colors {path} line {number}: {line.strip()!r} is not 'value red green blue'") from None
        label = " ".join(parts[5:]) or None
        entries.append(ColorEntry(int(parts[0]), label, hex_color(*rgb)))
    return entries


def _read_qml(path: Path) -> list[ColorEntry]:
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as exc:
        raise DataFormatError(f"--colors {path} is not a readable QGIS style ({exc})") from None
    entries = []
    for element in root.iter():
        if element.tag == "paletteEntry" or (element.tag == "item" and element.get("color")):
            value, color = element.get("value"), element.get("color", "")
            if not _HEX.match(color):
                continue
            number = float(value) if value is not None and _is_number(value) else None
            entries.append(ColorEntry(int(number) if number is not None and number.is_integer() else None,
                                      element.get("label"), color.lower()[:7]))
    return entries


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def apply_color_file(path: str | Path, names: Sequence[str], codes: Sequence[int] | None,
                     colors: Sequence[str]) -> list[str]:
    """`colors` with those the colour file gives replaced: an entry names a class by its code (value)
    or by its name (label, case-insensitive). Classes the file leaves out keep their colour."""
    entries = read_color_file(path)
    by_value = {e.value: e.color for e in reversed(entries) if e.value is not None}
    by_label = {e.label.strip().lower(): e.color for e in reversed(entries) if e.label}
    result, missing = [], []
    for k, (name, old) in enumerate(zip(names, colors)):
        code = codes[k] if codes else None
        color = by_value.get(code) if code is not None else None
        color = color or by_label.get(str(name).strip().lower())
        result.append(color or old)
        if color is None:
            missing.append(str(name))
    if len(missing) == len(names):
        keys = ", ".join(str(e.label if e.label is not None else e.value) for e in entries[:5])
        raise ConfigError(f"--colors {path}: no entry names a class (entries {keys}; classes "
                          f"{', '.join(map(str, names))}{'; codes ' + ', '.join(map(str, codes)) if codes else ''})")
    if missing:
        log(f"--colors {Path(path).name}: no colour for {', '.join(missing)}; keeping their default colours")
    return result


# ------------------------------------------------------------------------------------ sidecars

def qml_text(values: Sequence[int], names: Sequence[str], colors: Sequence[str]) -> str:
    """A QGIS layer style (`MAP.qml`, loaded by QGIS as the map's default style): the paletted
    renderer on band 1 with one entry per class (pixel value, colour, name as label)."""
    lines = ["<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>",
             f"<!-- {LEGEND_MARK} -->",
             '<qgis version="3.28.0" styleCategories="Symbology">',
             "  <pipe>",
             '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">',
             "      <rasterTransparency/>",
             "      <colorPalette>"]
    for value, name, color in zip(values, names, colors):
        r, g, b, a = parse_color(color)
        lines.append(f'        <paletteEntry value="{int(value)}" color={quoteattr(hex_color(r, g, b))} alpha="{a}" '
                     f"label={quoteattr(str(name))}/>")
    lines += ["      </colorPalette>", "    </rasterrenderer>",
              '    <rasterresampler maxOversampling="2"/>', "  </pipe>", "  <blendMode>0</blendMode>", "</qgis>", ""]
    return "\n".join(lines)


def clr_text(values: Sequence[int], names: Sequence[str], colors: Sequence[str]) -> str:
    """A colour map (`MAP.clr`): `value red green blue alpha label` per class, the format QGIS's
    paletted renderer exports and loads (its first four columns are ESRI's colour map format)."""
    lines = [f"# {LEGEND_MARK}: value red green blue alpha label"]
    for value, name, color in zip(values, names, colors):
        r, g, b, a = parse_color(color)
        label = " ".join(str(name).split())  # one line per class
        lines.append(f"{int(value)} {r} {g} {b} {a} {label}")
    return "\n".join(lines) + "\n"
