"""Client-side settings: where the API is and which credentials sign requests (KAOS_HOME/config.json)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


def home() -> Path:
    return Path(os.environ.get("KAOS_HOME") or Path.home() / ".kaos")


def config_path() -> Path:
    return home() / "config.json"


@dataclass
class ClientConfig:
    api_url: str = ""
    region: str = "us-east-1"
    profile: str = "default"
    credentials_file: str = ""
    workspace: str = ""

    @classmethod
    def load(cls) -> ClientConfig:
        path = config_path()
        values = json.loads(path.read_text()) if path.exists() else {}
        config = cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})
        config.api_url = os.environ.get("KAOS_API_URL", config.api_url)
        config.profile = os.environ.get("KAOS_PROFILE", config.profile)
        return config

    def save(self) -> None:
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
