"""What several migrations share: an earlier migration's SQL, and the grants that follow a
function's. Migrations import it (as some import the logging and the progress bar): a
migration's text must not change once shipped, but where it gets a helper from may."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def earlier_migration(here: str, name: str) -> ModuleType:
    """The migration `name` beside the file `here` (a migration's `__file__`), loaded for its
    SQL: migrations are files, not a package, so it cannot be imported by name."""
    path = Path(here).with_name(name)
    spec = importlib.util.spec_from_file_location(f"balancewatch_migration_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"no migration {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def grants_following(function: str, *granted: str) -> str:
    """A DO block granting EXECUTE on each of `granted` (signatures) to every role but the
    owner that may execute `function`: a role the README's grants gave the one keeps the
    rights it needs when a migration adds the others."""
    grants = "\n".join(
        f"        EXECUTE format('GRANT EXECUTE ON FUNCTION {name} TO %s', grantee);"
        for name in granted
    )
    return f"""
DO $$
DECLARE
    grantee regrole;
BEGIN
    FOR grantee IN
        SELECT a.grantee::regrole FROM pg_proc p CROSS JOIN LATERAL aclexplode(p.proacl) a
        WHERE p.oid = '{function}'::regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee NOT IN (0, p.proowner)
    LOOP
{grants}
    END LOOP;
END
$$
"""  # noqa: S608 (signatures of our own functions)
