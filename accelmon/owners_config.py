"""``[owners]`` config and the ownership mapping file (docs/owners.md).

The mapping file is a CSV with the header ``pattern,team,owner,email``.  ``pattern`` is a glob
(:func:`fnmatch.fnmatchcase`, case-sensitive) matched against the VM's inventory folder path
(``/DC0/vm/ml/prod``) and against its name; the first matching row wins.  It fills only what
vSphere itself does not hold for a VM (precedence in docs/owners.md).  A bad file is one error
line naming the file and the row.
"""

from __future__ import annotations

import csv
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

MAPPING_HEADER = ("pattern", "team", "owner", "email")


class MappingError(ValueError):
    """One line: ``<file>: row <n>: <what is wrong>``."""


@dataclass(frozen=True)
class MappingRule:
    row: int
    pattern: str
    team: str | None
    owner: str | None
    email: str | None

    def matches(self, folder_path: str | None, vm_name: str | None) -> bool:
        return any(s is not None and fnmatch.fnmatchcase(s, self.pattern) for s in (folder_path, vm_name))


def load_mapping(path: Path) -> list[MappingRule]:
    """Parse the mapping CSV; raises :class:`MappingError` (one line, file and row) when invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MappingError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    rows = list(csv.reader(text.splitlines()))
    if not rows:
        raise MappingError(f"{path}: row 1: empty file (want the header {','.join(MAPPING_HEADER)})")
    header = tuple(c.strip().lower() for c in rows[0])
    if header != MAPPING_HEADER:
        raise MappingError(f"{path}: row 1: header must be {','.join(MAPPING_HEADER)}, got {','.join(header)}")
    out: list[MappingRule] = []
    for n, r in enumerate(rows[1:], start=2):
        if not r or all(not c.strip() for c in r) or r[0].lstrip().startswith("#"):
            continue
        if len(r) != len(MAPPING_HEADER):
            raise MappingError(f"{path}: row {n}: want {len(MAPPING_HEADER)} fields "
                               f"({','.join(MAPPING_HEADER)}), got {len(r)}")
        pattern, team, owner, email = (c.strip() for c in r)
        if not pattern:
            raise MappingError(f"{path}: row {n}: pattern is empty")
        if not (team or owner or email):
            raise MappingError(f"{path}: row {n}: gives none of team, owner, email")
        if email and ("@" not in email or " " in email):
            raise MappingError(f"{path}: row {n}: email is not an address: {email!r}")
        out.append(MappingRule(n, pattern, team or None, owner or None, email or None))
    return out


def _name(v: Any) -> Any:
    if isinstance(v, str):
        v = v.strip()
        if not v:
            raise ValueError("must not be empty")
    return v


Name = Annotated[str, BeforeValidator(_name)]


class OwnersConfig(BaseModel):
    """Where owners come from.  Category / attribute names as the vSphere admins named them."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, validate_default=True)

    enabled: bool = True
    # vSphere tag categories (tagging REST API)
    owner_category: Name = "owner"
    team_category: Name = "team"
    cost_center_category: Name = "cost-center"
    email_category: Name | None = None
    # custom attributes (CustomFieldsManager field names)
    owner_attribute: Name = "Owner"
    team_attribute: Name = "Team"
    email_attribute: Name = "OwnerEmail"
    cost_center_attribute: Name | None = None
    mapping_file: Path | None = None
    # categories and tags (names) are re-read after this long; associations every inventory cycle
    tag_cache_ttl: float = Field(300.0, ge=0)

    @field_validator("mapping_file")
    @classmethod
    def _mapping(cls, v: Path | None) -> Path | None:
        if v is not None:
            load_mapping(v)  # MappingError is a ValueError: one line naming the file and row
        return v

    @model_validator(mode="after")
    def _distinct(self) -> OwnersConfig:
        cats = [c for c in (self.owner_category, self.team_category, self.cost_center_category,
                            self.email_category) if c is not None]
        if len(set(cats)) != len(cats):
            raise ValueError("owner_category, team_category, cost_center_category, email_category must differ")
        return self

    def categories(self) -> dict[str, str]:
        """Field → tag category name."""
        out = {"owner": self.owner_category, "team": self.team_category, "cost_center": self.cost_center_category}
        if self.email_category:
            out["email"] = self.email_category
        return out

    def attributes(self) -> dict[str, str]:
        """Field → custom attribute name."""
        out = {"owner": self.owner_attribute, "team": self.team_attribute, "email": self.email_attribute}
        if self.cost_center_attribute:
            out["cost_center"] = self.cost_center_attribute
        return out

    def rules(self) -> list[MappingRule]:
        return load_mapping(self.mapping_file) if self.mapping_file is not None else []


__all__ = ["MappingError", "MappingRule", "OwnersConfig", "load_mapping"]
