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
        for variable, name in ENVIRONMENT_OVERRIDES.items():
            if os.environ.get(variable):
                setattr(config, name, os.environ[variable])
        return config

    def save(self) -> None:
        """Writes the config. A value the environment overrides (KAOS_PROFILE, KAOS_API_URL) keeps what the file
        had: `KAOS_PROFILE=other kaos workspace create x` must not make `other` the profile of later commands."""
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = json.loads(path.read_text()) if path.exists() else {}
        values = asdict(self)
        for variable, name in ENVIRONMENT_OVERRIDES.items():
            if os.environ.get(variable) and values[name] == os.environ[variable] and name in stored:
                values[name] = stored[name]
        path.write_text(json.dumps(values, indent=2) + "\n")


ENVIRONMENT_OVERRIDES = {"KAOS_API_URL": "api_url", "KAOS_PROFILE": "profile"}
