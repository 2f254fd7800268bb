"""The case category tree (class → subclass)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SessionDep
from api.schemas import CategoryOut, SubcategoryOut
from gis.db import repo

router = APIRouter(prefix="/categories", tags=["categories"])


@router.get("", summary="Case category tree", response_model=list[CategoryOut])
def list_categories(session: SessionDep) -> list[CategoryOut]:
    """The two-level tree cases are filed under: classes, each with its subclasses and,
    per subclass, the hours allowed to resolve a case, its workload weight and the
    department that handles it when the grid cannot."""
    rows = repo.categories(session)
    classes = {
        c.code: CategoryOut(code=c.code, name=c.name, name_en=c.name_en, subclasses=[])
        for c in rows
        if c.level == "class"
    }
    for c in rows:
        if c.level == "subclass" and c.parent_code in classes:
            classes[c.parent_code].subclasses.append(
                SubcategoryOut(
                    code=c.code,
                    name=c.name,
                    name_en=c.name_en,
                    deadline_h=c.deadline_h,
                    workload_weight=c.workload_weight,
                    department=c.department,
                )
            )
    return list(classes.values())
