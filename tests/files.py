"""The repository's own files as tests read them: the README's SQL, the Dockerfile, the compose
file, the Kubernetes example."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from balancewatch.devtools import bench_history

REPO = Path(__file__).parent.parent
README = REPO / "README.md"


# -- README.md -------------------------------------------------------------------------------


def sql_blocks() -> list[str]:
    return bench_history.sql_blocks(README.read_text())


def numbered_queries() -> dict[int, str]:
    """The README's "Querying" section: its `-- N. ` blocks, by number."""
    return bench_history.numbered_queries(README.read_text())


# -- the container -----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def kubernetes() -> dict[str, dict[str, Any]]:
    """config/kubernetes/balancewatch.yaml's documents, by kind (one of each)."""
    text = (REPO / "config" / "kubernetes" / "balancewatch.yaml").read_text()
    documents = [document for document in yaml.safe_load_all(text) if document]
    by_kind = {document["kind"]: document for document in documents}
    assert len(by_kind) == len(documents), "one document of each kind"
    return by_kind


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, comments dropped and continuation lines joined."""
    lines = [
        line
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word:
            instructions.append((word.upper(), " ".join(rest.split())))
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def image_user() -> str:
    users = [args for word, args in final_stage() if word == "USER"]
    assert users, "the runtime stage sets no USER"
    return users[-1]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in final_stage():
        if word == "ENV":
            for pair in args.split():
                name, equals, value = pair.partition("=")
                if equals:
                    env[name] = value
    return env
