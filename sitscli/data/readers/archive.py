"""A product as a list of member files, whether it is a directory or a zip read through /vsizip/."""

from __future__ import annotations

import zipfile
from pathlib import Path

from sitscli.core.errors import DataFormatError


class ProductFiles:
    """Member paths (posix, relative to the product root) of a product directory or zip archive."""

    def __init__(self, path: Path):
        self.path = path
        self.zipped = path.is_file()
        if self.zipped:
            try:
                with zipfile.ZipFile(path) as archive:
                    self.members = sorted(n for n in archive.namelist() if not n.endswith("/"))
            except (zipfile.BadZipFile, OSError) as exc:
                raise DataFormatError(f"cannot read archive {path}: {exc} (corrupt or truncated zip: download it again)") from exc
        else:
            self.members = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())

    @property
    def name(self) -> str:
        return self.path.name

    def gdal_path(self, member: str) -> str:
        """A path GDAL opens: the file itself, or /vsizip/ARCHIVE/MEMBER."""
        return f"/vsizip/{self.path}/{member}" if self.zipped else str(self.path / member)

    def read_bytes(self, member: str) -> bytes:
        if self.zipped:
            with zipfile.ZipFile(self.path) as archive:
                return archive.read(member)
        return (self.path / member).read_bytes()
